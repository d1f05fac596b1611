"""Noise-conditional networks h(x, sigma) of Eq. (26), one registry of architectures."""
