"""Noise embedding of the networks h(x, sigma) (Appendix C, Tables 2 and 3): a smooth one-hot code of
log sigma over [log 1e-3, log 1e2]."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SIGMA_MIN = math.log(1e-3)
LOG_SIGMA_MAX = math.log(1e2)


def noise_embedding(
    sigma: Tensor, features: int, log_min: float = LOG_SIGMA_MIN, log_max: float = LOG_SIGMA_MAX
) -> Tensor:
    """Smooth one-hot encoding of log sigma, shape (B, features)::

        c_j = log_min + j (log_max - log_min)/(features - 1),  w = (log_max - log_min)/(features - 1)
        emb_j = exp(-(log sigma - c_j)^2 / (2 w^2))

    Gaussian bumps at ``features`` evenly spaced centres spanning [log_min, log_max] with width equal
    to their spacing, so neighbouring bumps overlap and the code varies smoothly with sigma (a single
    centre at the midpoint with width log_max - log_min when features = 1).
    """
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"features: must be a positive integer, got {features!r}")
    if not log_max > log_min:
        raise ValueError(f"log_max: must exceed log_min={log_min!r}, got {log_max!r}")
    sigma = torch.as_tensor(sigma)
    if not sigma.is_floating_point():
        sigma = sigma.to(torch.get_default_dtype())
    sigma = sigma.reshape(-1) if sigma.dim() > 0 else sigma.reshape(1)
    if features == 1:
        centres = torch.tensor([(log_min + log_max) / 2], dtype=sigma.dtype, device=sigma.device)
        width = log_max - log_min
    else:
        centres = torch.linspace(log_min, log_max, features, dtype=sigma.dtype, device=sigma.device)
        width = (log_max - log_min) / (features - 1)
    u = (torch.log(sigma)[:, None] - centres) / width
    return torch.exp(-0.5 * u**2)
