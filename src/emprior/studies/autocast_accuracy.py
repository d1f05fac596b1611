"""Does bf16 autocast of the denoiser change MMPS posterior samples beyond Monte-Carlo error?

An analytic problem: a Gaussian prior x ~ N(mu, Sigma) in d dimensions and one observation
y = A x* + noise_std e with a random projection A (m x d). Its exact denoiser is
E[x | x_t] = mu + Sigma (Sigma + sigma^2 I)^-1 (x_t - mu), and in the EDM form of Eq. (26),
d = c_skip x_t + c_out h(c_in x_t, sigma), the network that makes d exact is closed form too
(:class:`GaussianNet`; eigenbasis Sigma = Q diag(lam) Q^T, u = c_in x_t):

    h(u, sigma) = Q [ sigma ((lam - 1) * Q^T u + sqrt(1 + sigma^2) Q^T mu) / (lam + sigma^2) ]

i.e. two matmuls by Q, which autocast runs in bfloat16 like the layers of a real network.
n posterior samples are drawn by MMPS(1) (Algorithm 3: Tweedie covariance, one CG iteration) inside the
DDPM sampler (Algorithm 2), twice from the same noise: float32, and through the suite's autocast
wrapper (:class:`~emprior.core.precision.Precision` ``autocast: bf16``). ``form="network"`` puts
:class:`GaussianNet` in the suite's :class:`~emprior.diffusion.preconditioning.PreconditionedDenoiser`
(as a trained denoiser is run: the skip path c_skip x_t in float32); ``form="denoiser"`` runs the whole
closed-form :class:`~emprior.priors.gaussian.GaussianDenoiser` under autocast (a harsher case: its
x_t path is rounded to bf16 too, an error that does not shrink with sigma). The CG solve, y - A x_hat
and the sampler stay float32 in both.

The yardstick is the Monte-Carlo error of the float32 estimate: per coordinate i,

    z_mean_i = (mean_bf16_i - mean_fp32_i) / (sd_fp32_i / sqrt(n)),
    z_var_i  = (var_bf16_i - var_fp32_i) / (var_fp32_i sqrt(2 / (n - 1))),

(the standard errors of a sample mean and of a Gaussian sample variance). |z| << 1 means autocast
moves the estimates by much less than their sampling noise. For scale, the same z against the exact
posterior N(mu_post, Sigma_post) (float64 closed form) is reported for both precisions: MMPS(1) is not
exact, and that bias is what bf16 must not change.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from emprior.core.precision import Precision
from emprior.diffusion.preconditioning import PreconditionedDenoiser
from emprior.diffusion.samplers import sample
from emprior.diffusion.schedule import Schedule
from emprior.operators import make_operator
from emprior.posterior import make_posterior
from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian, gaussian_posterior


class GaussianNet(torch.nn.Module):
    """The network h(u, sigma) with which Eq. (26)'s preconditioned denoiser is the exact denoiser of
    N(mu, Sigma) (module docstring). Buffers in float32; ``forward`` is two matmuls by Q."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor):
        super().__init__()
        lam, Q = torch.linalg.eigh(cov.double())
        self.register_buffer("Q", Q.float())
        self.register_buffer("lam", lam.float())
        self.register_buffer("mu_q", (Q.T @ mu.double()).float())

    def forward(self, u: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1).to(u.dtype)
        coef = u @ self.Q  # Q^T u per row
        inner = s * ((self.lam - 1) * coef + torch.sqrt(1 + s**2) * self.mu_q) / (self.lam + s**2)
        return inner @ self.Q.T


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double().reshape(len(x), -1)
    return x.mean(0), x.var(0)


def _z(mean: torch.Tensor, var: torch.Tensor, ref_mean: torch.Tensor, ref_var: torch.Tensor, n: int
       ) -> dict[str, float]:
    zm = (mean - ref_mean) / (ref_var / n).sqrt()
    zv = (var - ref_var) / (ref_var * math.sqrt(2 / (n - 1)))
    return {"max_abs_z_mean": float(zm.abs().max()), "rms_z_mean": float(zm.square().mean().sqrt()),
            "max_abs_z_var": float(zv.abs().max()), "rms_z_var": float(zv.square().mean().sqrt())}


def measure(d: int = 16, m: int = 8, noise_std: float = 0.1, n: int = 1024, steps: int = 64,
            sigma_min: float = 1e-3, sigma_max: float = 10.0, maxiter: int = 1, seed: int = 0,
            form: str = "network") -> dict[str, Any]:
    """The z statistics above (bf16 vs float32 from the same noise; each vs the exact posterior) and the
    per-sample relative change median ||x_bf16 - x_fp32|| / ||x_fp32 - mean_fp32||, for ``form``
    "network" or "denoiser" (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = b @ b.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    prior = LowRankGaussian.full(mu, cov).to(dtype=torch.float32)
    op = make_operator("projection", 1, (d,), noise_std, np.random.default_rng(seed), m=m)
    x_true = prior.sample(1, g)
    y = op.observe(x_true, generator=g)
    A = op.A(torch.eye(d, dtype=torch.float64)).T  # (m, d): column j is A e_j
    post_mean, post_cov = gaussian_posterior(mu, cov, A, y[0].double(), noise_std)
    schedule = Schedule(sigma_min=sigma_min, sigma_max=sigma_max)
    x_T = sigma_max * torch.randn(n, d, generator=g)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    samples = {}
    for name in ("none", "bf16"):
        exact = PreconditionedDenoiser(GaussianNet(mu, cov)) if form == "network" else GaussianDenoiser(prior)
        denoiser = Precision(autocast=name).wrap(exact)
        post = make_posterior("mmps", denoiser, op, y, covariance="tweedie", solver="cg", maxiter=maxiter)
        gen = torch.Generator().manual_seed(noise_seed)  # the same noise for both precisions
        samples[name] = sample(post, x_T, schedule, steps, "ddpm", generator=gen)
    m32, v32 = _moments(samples["none"])
    m16, v16 = _moments(samples["bf16"])
    exact_var = torch.diagonal(post_cov)
    diff = (samples["bf16"] - samples["none"]).double().norm(dim=1)
    spread = (samples["none"].double() - m32).norm(dim=1)
    return {
        "settings": {"d": d, "m": m, "noise_std": noise_std, "n": n, "steps": steps, "sampler": "ddpm",
                     "sigma_min": sigma_min, "sigma_max": sigma_max, "posterior": f"mmps tweedie cg maxiter={maxiter}",
                     "seed": seed, "form": form, "torch": torch.__version__},
        "bf16_vs_fp32": _z(m16, v16, m32, v32, n),
        "fp32_vs_exact": _z(m32, v32, post_mean, exact_var, n),
        "bf16_vs_exact": _z(m16, v16, post_mean, exact_var, n),
        "median_relative_sample_change": float((diff / spread).median()),
        "identical": bool(torch.equal(samples["bf16"], samples["none"])),
    }
