"""Initial prior q_0 by Monte Carlo EM (``init.estimator: sampled``): the official DiEM ``fit_moments``
(priors/common.py:80-119 at 09a7253), for latents too large for the dense closed-form EM of
:mod:`emprior.priors.gaussian_em` (fastMRI: d = 320^2; phantoms: 64^2, whose dense A_i would be
(2 * 64^2) x 64^2 per observation).

Starting from N(0, I), each of ``init.iterations`` rounds
1. draws one posterior sample x_i ~ q(x | y_i) per observation with the current Gaussian prior as the
   denoiser (exact Tweedie moments, Eqs. 8-9) and the variant's E-step posterior (MMPS with CG) and the
   init's diffusion sampler and steps, on the first ``init.observations`` observations;
2. fits N(mu, U diag(s) U^T + tau I) to the samples by maximum-likelihood PPCA of rank ``init.rank``
   (Tipping & Bishop 1999): mu the sample mean, U the top-r right singular vectors of the centred
   samples, lambda their eigenvalues, tau the mean of the remaining eigenvalues (total variance minus
   the top r, over d - r), s = lambda - tau.
The official code fits on every 4th of the first 16 384 observations with DDIM 256 steps and CG 5.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from emprior.priors.gaussian_em import GaussianEMResult


def ppca_from_samples(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """ML PPCA (mean, U (d, r), s (r,), tau) of samples x (n, d); r = min(rank, n, d - 1)."""
    x = x.reshape(len(x), -1).to(torch.float64)
    n, d = x.shape
    mean = x.mean(0)
    centred = x - mean
    _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
    lam = sv**2 / n                                       # eigenvalues of the sample covariance (<= n of them)
    r = min(rank, len(lam), d - 1)
    total = float(centred.square().sum() / n)
    tau = max((total - float(lam[:r].sum())) / (d - r), 1e-12)
    return mean, vh[:r].T.contiguous(), (lam[:r] - tau).clamp_min(0), tau


def fit_gaussian_sampled(job: Any, obs: Any, method: Any) -> GaussianEMResult:
    """q_0 of the module docstring for the job's experiment (``init`` section) and variant (``method``'s
    posterior); streams (seed, experiment, variant, 0, "init", round)."""
    from emprior.diffusion.samplers import sample
    from emprior.diffusion.schedule import Schedule
    from emprior.priors.checkpoint import gaussian_checkpoint, prior_from_checkpoint

    init = job.exp["init"]
    rank = int(init.get("rank") or 64)
    n = min(len(obs), int(init.get("observations", len(obs))))
    sub = obs.subset(torch.arange(n).numpy()) if n < len(obs) else obs
    x_shape = tuple(obs.x_shape)
    d = math.prod(x_shape)
    schedule = Schedule(**job.exp["schedule"])
    steps = int(init.get("steps", job.exp["estep"]["steps"]))
    sampler = init.get("sampler", job.exp["estep"]["sampler"])
    # N(0, I), as the official DPLR(ones, 0, 0)
    result = GaussianEMResult(mean=torch.zeros(d, dtype=torch.float64), U=torch.eye(d, 1, dtype=torch.float64),
                              s=torch.zeros(1, dtype=torch.float64), tau=1.0)
    y = sub.y.to(job.device)
    for k in range(int(init["iterations"])):
        prior = prior_from_checkpoint(gaussian_checkpoint(result, x_shape), "init (sampled)", job.device)
        post = method.posterior(prior, sub.op, y)
        gen = job.generator("init", k)
        x_T = schedule.sigma_max * torch.randn((n, *x_shape), generator=gen, device=job.device)
        x = sample(post, x_T, schedule, steps, sampler, generator=gen)
        mean, U, s, tau = ppca_from_samples(x.cpu(), rank)
        result = GaussianEMResult(mean=mean, U=U, s=s, tau=tau)
    return result
