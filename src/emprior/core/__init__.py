"""Plumbing every job shares: atomic artifacts, provenance, seeds, logging, errors, plug-in registries, devices."""
