"""A discrete variance-preserving (DDPM) chain seen in this suite's variance-exploding coordinates.

The DDPM chain (Ho et al. 2020; guided_diffusion, the code DPS and EMDiffusion sample with) has
``T`` linear betas and abar_t = prod_{i <= t} (1 - beta_i); its state is x^VP_t = sqrt(abar_t) x_0
+ sqrt(1 - abar_t) z. On images ``data_scale`` times larger than the chain's [-1, 1] (this suite's
[-2, 2]: ``data_scale`` = 2) the same process in VE coordinates is

    x^VE = data_scale x^VP / sqrt(abar),      sigma = data_scale sqrt((1 - abar) / abar),

so a VP chain is a grid of VE noise levels, and its ancestral (posterior-variance, "fixed_small")
step from t to t' is the Gaussian bridge q(x_{t'} | x_t, x_0) that the suite's DDPM sampler takes
between the corresponding sigmas. ``timestep_respacing`` keeps a subset of the T timesteps
(guided_diffusion's ``space_timesteps`` with one section: evenly strided, rounded, first and last
kept) and bridges between the kept ones (``SpacedDiffusion``'s betas 1 - abar_t / abar_prev).

:class:`VPChain` is such a grid with the interface of :class:`~emprior.diffusion.schedule.Schedule`
that :func:`~emprior.diffusion.samplers.sample` uses (``discretize`` and ``sigma_max``), so an
E-step can walk the reference chain's noise levels with the suite's DDPM sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["VPChain", "linear_betas", "space_timesteps"]


def linear_betas(T: int) -> np.ndarray:
    """guided_diffusion's "linear" schedule: linspace(1e-4, 0.02) scaled by 1000 / T."""
    scale = 1000.0 / T
    return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)


def space_timesteps(T: int, count: int) -> list[int]:
    """The ``count`` timesteps of 0..T-1 that guided_diffusion keeps for ``timestep_respacing=count``
    (one section: stride (T - 1) / (count - 1), rounded; sorted ascending)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= T:
        raise ValueError(f"steps: must be an integer in [1, {T}], got {count!r}")
    stride = 1.0 if count <= 1 else (T - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


class VPChain:
    """The VE noise levels of a respaced linear-beta VP chain of ``T`` steps on images ``data_scale``
    times the chain's [-1, 1]. ``discretize(steps)`` returns the ``steps + 1`` levels of the chain
    respaced to ``steps + 1`` timesteps, from the top (t = T - 1) to t = 0: the suite's sampler takes
    ``steps`` bridges between them and its final denoise is the chain's last step (t = 0 to x_0).
    ``sigma_max`` is the standard deviation of x_T: the chain's N(0, I) start in VP, i.e.
    data_scale / sqrt(abar_{T-1}) in VE (a hair above the top level, as in the reference)."""

    def __init__(self, T: int = 1000, data_scale: float = 2.0):
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ValueError(f"T: must be an integer >= 2, got {T!r}")
        if not (math.isfinite(float(data_scale)) and data_scale > 0):
            raise ValueError(f"data_scale: must be a positive finite number, got {data_scale!r}")
        self.T = T
        self.data_scale = float(data_scale)
        self.alphas_cumprod = np.cumprod(1.0 - linear_betas(T))
        self.sigma_max = self.data_scale / math.sqrt(self.alphas_cumprod[-1])
        self.sigma_min = float(self.sigma(0))

    def __repr__(self) -> str:
        return f"VPChain(T={self.T}, data_scale={self.data_scale!r})"

    def sigma(self, t: int) -> float:
        """VE noise level of VP timestep t."""
        a = self.alphas_cumprod[t]
        return self.data_scale * math.sqrt((1.0 - a) / a)

    def timesteps(self, steps: int) -> list[int]:
        """The kept VP timesteps, descending, for ``steps`` bridges (``steps + 1`` evaluations)."""
        return space_timesteps(self.T, steps + 1)[::-1]

    def discretize(self, steps: int) -> torch.Tensor:
        """float64 tensor of the ``steps + 1`` VE levels of the respaced chain, strictly decreasing."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: must be a positive integer, got {steps!r}")
        return torch.tensor([self.sigma(t) for t in self.timesteps(steps)], dtype=torch.float64)

