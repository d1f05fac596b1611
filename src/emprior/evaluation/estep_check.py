"""E-step accuracy against the exact posterior, measured where it is known: EM iteration 1.

The first E-step samples q_0(x | y, A) with q_0 = N(mu, Sigma) the Gaussian fitted in iteration 0, so
its target is closed-form (Sec. 4.1; :func:`emprior.priors.gaussian.gaussian_posterior`)::

    S_i = A_i Sigma A_i^T + Sigma_y,   mu_i = mu + Sigma A_i^T S_i^-1 (y_i - A_i mu),
    Sigma_i = Sigma - Sigma A_i^T S_i^-1 A_i Sigma.

With a Gaussian prior the denoiser is linear and Tweedie's covariance (Eq. (21)) is exact, so MMPS
(Eqs. (19), (22)) differs from the exact posterior score only by the truncated solver and the
sampler's discretisation; the heuristics Sigma_t and (I + Sigma_t^-1)^-1 (Algorithm 3, line 6) also
by the covariance. This module draws ``repeats`` posterior samples x_ir for each of the first
``observations`` pairs (y_i, A_i) with the variant's E-step settings and scores them per observation,
normalised by the posterior's total variance tr Sigma_i:

    spread_i = sum_r ||x_ir - m_i||^2 / ((R - 1) tr Sigma_i)             (exact sampler: 1)
    bias2_i  = (||m_i - mu_i||^2 - spread_i tr Sigma_i / R) / tr Sigma_i  (exact sampler: 0)

with m_i the samples' mean; bias2_i subtracts the mean's own sampling noise so it is unbiased for
||E[x_ir] - mu_i||^2 / tr Sigma_i. Reported: the means over observations and their standard errors.
A spread below 1 is under-dispersion (e.g. the ancestral sampler of Algorithm 2 loses variance at
coarse discretisation), above 1 over-dispersion (the paper's diagnosis of the heuristics, Sec. 4.2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from emprior.core.errors import ArtifactError, ConfigError

DEFAULTS = {"observations": 64, "repeats": 16}
DENSE_MAX = 4096  # d above which the dense d x d posterior covariances are not formed (skipped, with a reason)


def exact_posteriors(gaussian, op, y: torch.Tensor, noise_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact N(mu_i, Sigma_i) of x | y_i under the prior ``gaussian`` (a LowRankGaussian), float64:
    means (n, d) and covariances (n, d, d) for the n observations in ``y``."""
    from emprior.priors.gaussian import gaussian_posterior
    from emprior.operators import measured_system

    mu = gaussian.mean.reshape(-1).double()
    cov = gaussian.dense_cov().double()
    means, covs = [], []
    for i in range(len(y)):
        a, y_i = measured_system(op, i, y)
        m, c = gaussian_posterior(mu, cov, a, y_i, noise_std)
        means.append(m)
        covs.append(c)
    return torch.stack(means), torch.stack(covs)


def score_samples(x: torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> dict[str, float | None]:
    """spread and bias2 (module docstring) of samples x (n, R, d) against N(means_i, covs_i)."""
    n, r, _ = x.shape
    if r < 2:
        raise ValueError(f"repeats: need at least 2 samples per observation, got {r}")
    x = x.double()
    tr = torch.diagonal(covs, dim1=-2, dim2=-1).sum(-1)
    m = x.mean(1)
    s2 = (x - m[:, None]).square().sum(-1).sum(1) / (r - 1)
    spread = s2 / tr
    bias2 = ((m - means).square().sum(-1) - s2 / r) / tr
    out: dict[str, float | None] = {}
    for name, v in (("spread", spread), ("bias2", bias2)):
        out[name] = float(v.mean())
        out[f"{name}_se"] = float(v.std() / np.sqrt(n)) if n > 1 else None  # JSON has no NaN
    out["posterior_trace_mean"] = float(tr.mean())
    return out


def check_estep(prior, method, obs, job, observations: int = DEFAULTS["observations"],
                repeats: int = DEFAULTS["repeats"]) -> dict[str, Any]:
    """Draw ``repeats`` E-step samples for each of the first ``observations`` pairs (the variant's
    sampler, covariance and solver; its own random stream) and score them against the exact posterior."""
    from emprior.methods.estep import run_estep

    if prior.gaussian is None:
        raise ArtifactError("estep check: needs the Gaussian q_0 (iter_000/model.pt), got a learned prior")
    for name, v, least in (("observations", observations, 1), ("repeats", repeats, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise ConfigError(f"evaluate.estep_check.{name}: must be an integer >= {least}, got {v!r}")
    d = int(np.prod(obs.x_shape))
    if d > DENSE_MAX:
        return {"observations": 0, "repeats": int(repeats), "seconds": 0.0,
                "skipped": f"d = {d} > {DENSE_MAX}: dense exact posteriors not formed"}
    n = min(int(observations), len(obs))
    rows = np.repeat(np.arange(n), repeats)
    sub = obs.subset(rows)
    bs = job.exp["estep"]["block_size"]
    res = run_estep(prior, method, sub, job, list(range(-(-len(rows) // bs))), stream="estep_check")
    x = res["x"].reshape(n, repeats, -1)
    means, covs = exact_posteriors(prior.gaussian.to(device="cpu"), obs.op, obs.y[:n], obs.noise_std)
    # run_estep raises on non-finite samples, so every score below is of finite samples
    return {"observations": n, "repeats": int(repeats), **score_samples(x, means, covs), "seconds": res["seconds"]}
