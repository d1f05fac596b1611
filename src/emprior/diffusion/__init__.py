"""Variance-exploding diffusion: schedule, preconditioning, DSM loss, EMA and the registered samplers."""
