"""The variance-exploding process and its noise schedule.

Conventions (diem-neurips Section 2 and Appendix C). The forward process is VE (Eq. (1)-(2) with
f_t = 0, alpha_t = 1)::

    x_t = x + sigma_t z,   z ~ N(0, I).

A *denoiser* is any callable ``d(x_t, sigma) -> E[x | x_t]`` with ``x_t`` of shape (B, *event_shape)
and ``sigma`` a tensor of shape (B,). The score follows from Tweedie's formula, Eq. (5)::

    s(x_t) = (d(x_t, sigma) - x_t) / sigma^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["Denoiser", "Schedule", "batch_sigma", "expand_as_batch"]

Denoiser = Callable[[Tensor, Tensor], Tensor]


def batch_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` as a (B,) tensor on ``x``'s device/dtype; a float or 0-d tensor is broadcast."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        return sigma.expand(x.shape[0])
    if sigma.dim() == 1 and sigma.shape[0] in (1, x.shape[0]):
        return sigma.expand(x.shape[0])
    raise ValueError(f"sigma: expected a scalar or shape ({x.shape[0]},), got shape {tuple(sigma.shape)}")


def expand_as_batch(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against (B, *event_shape)."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


class Schedule:
    """Exponential VE noise schedule, Eq. (27)::

        sigma_t = exp((1 - t) log sigma_min + t log sigma_max),  t in [0, 1].

    The paper uses sigma_min = 1e-3, sigma_max = 1e2 (the official manifold code uses sigma_max = 1e1).
    """

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1e2):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not (math.isfinite(sigma_min) and sigma_min > 0):
            raise ValueError(f"sigma_min: must be a positive finite number, got {sigma_min!r}")
        if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
            raise ValueError(f"sigma_max: must be finite and > sigma_min={sigma_min!r}, got {sigma_max!r}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.log_min = math.log(sigma_min)
        self.log_max = math.log(sigma_max)

    def __repr__(self) -> str:
        return f"Schedule(sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r})"

    def sigma(self, t: Tensor | float) -> Tensor:
        """sigma_t of Eq. (27), elementwise in ``t`` (any shape)."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return torch.exp((1 - t) * self.log_min + t * self.log_max)

    def discretize(self, steps: int) -> Tensor:
        """The sampling grid: sigma at t = 1, (steps-1)/steps, ..., 1/steps, 0.

        Returns a float64 tensor of length ``steps + 1``, strictly decreasing from sigma_max to
        sigma_min (the last grid point is sigma_min, not 0).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: must be a positive integer, got {steps!r}")
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return self.sigma(t)
