"""Posterior denoisers E[x | x_t, y] (MMPS and its peers), one sampler per module, one registry."""
