"""The deterministic Heun sampler of EDM (Karras et al. 2022, Algorithm 1), as a diffusion-sampler plug-in.

For the VE probability-flow ODE dx/dsigma = (x - D(x, sigma))/sigma (EDM Eq. 4 with s(t) = 1,
sigma(t) = t), one step from s to s' < s is the trapezoidal (second-order) rule::

    k_1 = (x - D(x, s))/s,   x~ = x + (s' - s) k_1,   k_2 = (x~ - D(x~, s'))/s',
    x'  = x + (s' - s) (k_1 + k_2)/2

on the grid (EDM Eq. 5, ``rho`` = 7 in EDM and in AmbientDiffusion's ``eval.py``)::

    sigma_i = (sigma_max^(1/rho) + i/N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,   i = 0, ..., N.

EDM's last step, from sigma_min to 0, is an Euler step: x + (0 - s)(x - D(x, s))/s = D(x, s), which is
:func:`~emprior.diffusion.samplers.sample`'s final denoise. So EDM's ``num_steps`` = K (K noise levels
plus 0, 2K - 1 network calls) is ``steps = K - 1`` here. No noise is drawn (S_churn = 0, the
AmbientDiffusion default), so the samples depend only on x_T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from emprior.core.registry import option
from emprior.diffusion.samplers import DIFFUSION_SAMPLERS, ReverseStep
from emprior.diffusion.schedule import Schedule

__all__ = ["Heun", "HeunOptions", "rho_grid"]


def rho_grid(sigma_min: float, sigma_max: float, steps: int, rho: float) -> Tensor:
    """EDM Eq. 5: ``steps + 1`` noise levels from sigma_max down to sigma_min, float64."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be a positive integer, got {steps!r}")
    if not rho > 0:
        raise ValueError(f"rho: must be positive, got {rho!r}")
    i = torch.arange(steps + 1, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    g = (a + i / steps * (b - a)) ** rho
    g[0], g[-1] = sigma_max, sigma_min  # exact end points (no round-off at the ends)
    return g


@dataclass(frozen=True)
class HeunOptions:
    rho: float = option(7.0, exclusiveMinimum=0, doc="grid exponent of EDM Eq. 5 (EDM and AmbientDiffusion: 7)")


@DIFFUSION_SAMPLERS.register("heun", HeunOptions)
class Heun(ReverseStep):
    """EDM Algorithm 1 (deterministic Heun, 2nd order) on the rho-spaced grid."""

    def grid(self, schedule: Schedule, steps: int) -> Tensor:
        return rho_grid(schedule.sigma_min, schedule.sigma_max, steps, float(self.options.rho))

    def predict(self, d, x, s, s_next, generator):
        k1 = (x - d(x, s)) / s
        x_euler = x + (s_next - s) * k1
        k2 = (x_euler - d(x_euler, s_next)) / s_next
        return x + (s_next - s) * 0.5 * (k1 + k2)
