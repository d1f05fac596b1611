"""Priors q_k: the Gaussian q_0 and its EM fit, Gaussian mixtures, and model.pt checkpoints."""
