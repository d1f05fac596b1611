"""DPS as the DPS / EMDiffusion code runs it: a constant step per VP step, the residual norm of the
whole batch, x_hat clipped to the data range; translated exactly to this suite's VE sampler.

Reference (weiminbai/EMDiffusion @ 4f56e46, the DPS code base): every step t of the DDPM chain
(``p_sample_loop``, guided_diffusion/gaussian_diffusion.py:174-216) takes the ancestral step with the
clipped estimate x_hat = clamp(x_0(x_t), -1, 1) (posterior_mean_variance.py:40-45, 125-129;
``clip_denoised: True``), then (condition_methods.py:28-32, 84-87)

    x_{t-1} <- x_{t-1} - scale grad_{x_t} ||Y - A x_hat(x_t)||,

with ``torch.linalg.norm`` of the residual of the *whole batch* (Frobenius norm): sample i moves
along J_i^T A^T r_i / ||R||_F, r_i its own residual, ||R||_F over all samples of the batch.

Translation to VE coordinates (:mod:`emprior.diffusion.vp_chain`): x^VE = d x^VP / sqrt(abar),
sigma = d sqrt((1 - abar)/abar), d = ``data_scale`` (this suite's [-2, 2] images are d = 2 times
the reference's [-1, 1]). Then r / ||R|| is the same in both coordinates, the Jacobian of x_hat^VE
is sqrt(abar_t) times that of x_hat^VP, and their step moves x^VE_{t-1} by

    c J^T A^T r_i / ||R||,     c = scale d / sqrt(abar_t abar_{t-1})
                                 = scale d sqrt((1 + sigma_t^2/d^2)(1 + sigma_{t-1}^2/d^2)),

(abar_{-1} = 1: the last step lands on x_0), at every level, not matched at one sigma: a zeta of
the suite's DPS would have to grow like 1/sigma^2 as sigma -> 0. The ancestral step is the
suite's DDPM bridge x' = r x + (1 - r) D + noise (r = sigma'^2/sigma^2), so this denoiser returns

    D = clip(x_hat) + c / (1 - r) J^T A^T r_i / ||R||,

and the DDPM sampler on the chain's levels reproduces the reference step for step; the final
denoise at the chain's last level (r = 0) is its last step. The next level sigma' is the next level
of the chain (``T`` linear betas, respaced to ``respacing`` evaluations) below the sigma asked for.

Options (each departure from the reference is an option whose default is the reference):
``scale`` (the reference's per-task value, e.g. 20 for CIFAR-10 inpainting), ``norm`` ("batch": the
Frobenius norm over groups of ``batch`` consecutive samples, 250 as e-step.sh's --batch_size;
"sample": each sample's own norm, DPS's Algorithm 1), ``clip`` (clamp x_hat to [-d, d] before the
residual and the ancestral step; the gradient passes through the clamp, zero outside),
``guidance_per`` ("step": ``scale`` per evaluated step, as the reference code does when respaced;
"vp_step": ``scale`` times the number of the chain's ``T`` steps a respaced step spans, so a
shorter chain pushes about as much in total as the full one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from emprior.core.registry import option
from emprior.diffusion.vp_chain import VPChain
from emprior.linalg import batch_dot
from emprior.posterior.base import POSTERIOR_SAMPLERS, PosteriorDenoiser, col, nonneg_float

__all__ = ["DPSVP", "DPSVPOptions"]


@dataclass(frozen=True)
class DPSVPOptions:
    scale: float = option(1.0, minimum=0, doc="DPS step per VP step (the reference's conditioning scale)")
    norm: Literal["batch", "sample"] = option("batch", doc="residual norm over a batch (reference) or per sample")
    batch: int | None = option(250, minimum=1,
                               doc="consecutive samples sharing one residual norm (None: the whole block)")
    clip: bool = option(True, doc="clamp x_hat to the data range [-data_scale, data_scale] (clip_denoised)")
    data_scale: float = option(2.0, exclusiveMinimum=0, doc="data range of the images over the reference's [-1, 1]")
    T: int = option(1000, minimum=2, doc="linear-beta VP chain length")
    respacing: int = option(1000, minimum=2, doc="evaluations of the respaced chain (timestep_respacing)")
    guidance_per: Literal["step", "vp_step"] = option(
        "step", doc="scale per evaluated step (reference) or per VP step of the full chain it spans")


@POSTERIOR_SAMPLERS.register("dps_vp", DPSVPOptions)
class DPSVP(PosteriorDenoiser):
    """DPS with the reference code's VP step, batch residual norm and clip (see the module docstring)."""

    def __init__(self, denoiser, op, y, options: DPSVPOptions | None = None):
        options = DPSVPOptions() if options is None else options
        super().__init__(denoiser, op, y, options)
        self.scale = nonneg_float("scale", options.scale)
        if options.norm not in ("batch", "sample"):
            raise ValueError(f"norm: must be 'batch' or 'sample', got {options.norm!r}")
        if options.guidance_per not in ("step", "vp_step"):
            raise ValueError(f"guidance_per: must be 'step' or 'vp_step', got {options.guidance_per!r}")
        if options.batch is not None and (isinstance(options.batch, bool) or int(options.batch) < 1):
            raise ValueError(f"batch: must be a positive integer or None, got {options.batch!r}")
        if not 2 <= options.respacing <= options.T:
            raise ValueError(f"respacing: must be in [2, T={options.T}], got {options.respacing!r}")
        self.d = nonneg_float("data_scale", options.data_scale, positive=True)
        self.chain = VPChain(options.T, self.d)
        self.timesteps = self.chain.timesteps(options.respacing - 1)  # descending
        # ascending levels of the respaced chain and their VP timesteps, for the next-level lookup
        self.levels = torch.tensor([self.chain.sigma(t) for t in self.timesteps[::-1]], dtype=torch.float64)
        self.level_t = torch.tensor(self.timesteps[::-1], dtype=torch.float64)
        self.stats["scale"] = self.scale

    def reset_stats(self) -> None:
        super().reset_stats()
        if hasattr(self, "scale"):
            self.stats["scale"] = self.scale

    def next_level(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma', VP steps spanned) for each sigma: the chain's next level below sigma (0 past the
        last), and t(sigma) - t(sigma') (1 for the last step to x_0)."""
        s = sigma.detach().to(torch.float64).cpu()
        i = torch.searchsorted(self.levels, s * (1 - 1e-6), side="left") - 1  # largest level < sigma
        below = i >= 0
        j = i.clamp_min(0)
        s_next = torch.where(below, self.levels[j], torch.zeros_like(s))
        t_next = torch.where(below, self.level_t[j], torch.full_like(s, -1.0))
        k = (torch.searchsorted(self.levels, s * (1 - 1e-6), side="left")).clamp_max(len(self.levels) - 1)
        span = (self.level_t[k] - t_next).clamp_min(1.0)
        return s_next, span

    def step_coefficient(self, sigma: torch.Tensor) -> torch.Tensor:
        """c / (1 - r) per sample (float64): the factor of J^T A^T r_i / ||R|| in the returned D."""
        s = sigma.detach().to(torch.float64).cpu()
        s_next, span = self.next_level(s)
        d = self.d
        c = self.scale * d * torch.sqrt((1 + (s / d) ** 2) * (1 + (s_next / d) ** 2))
        if self.options.guidance_per == "vp_step":
            c = c * span
        return c / (1 - (s_next / s) ** 2)

    def group_norms(self, r: torch.Tensor) -> torch.Tensor:
        """||R|| per sample: its own residual norm ("sample") or that of its group of ``batch``
        consecutive samples ("batch"; the whole batch when ``batch`` is None)."""
        sq = batch_dot(r, r)
        if self.options.norm == "sample":
            return sq.sqrt()
        n = len(sq)
        g = n if self.options.batch is None else int(self.options.batch)
        group = torch.arange(n, device=sq.device) // g
        total = torch.zeros(int(group.max()) + 1, dtype=sq.dtype, device=sq.device).index_add_(0, group, sq)
        return total[group].sqrt()

    def _estimate(self, x_t, sigma, y):
        x_hat, vjp = self._linearize(x_t, sigma)
        x_hat_d = x_hat.detach()
        if self.options.clip:
            x_hat_d = x_hat_d.clamp(-self.d, self.d)
        r = y - self.op.A(x_hat_d)
        rn = self.group_norms(r)
        u = r / col(torch.where(rn > 0, rn, torch.ones_like(rn)), r)  # -grad of ||R|| w.r.t. A x_hat
        g = self.op.At(u)
        if self.options.clip:  # d clamp / d x_hat: 1 inside [-d, d] (bounds included, as torch.clamp), 0 outside
            g = g * ((x_hat.detach() >= -self.d) & (x_hat.detach() <= self.d)).to(g.dtype)
        coef = self.step_coefficient(sigma).to(dtype=x_t.dtype, device=x_t.device)
        out = x_hat_d + col(coef, x_t) * vjp(g)
        return self._finalize(out, x_hat_d)

