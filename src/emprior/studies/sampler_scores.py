"""Distributional scores of posterior samples against an exact (Gaussian-mixture) posterior.

For observation i let X_i be the method's S samples, E_i and E_i' two independent sets of S direct
samples from the exact p(x | y_i) (a mixture, :meth:`GaussianMixture.posterior`), with mean mu_i and
covariance Sigma_i. Per (prior, task, method, steps) the benchmark reports, averaged over i:

* ``distance`` = SW_2(X_i, E_i), the sliced 2-Wasserstein distance between the two empirical laws
  (POT's ``ot.sliced_wasserstein_distance``: sqrt of the mean over P random unit directions theta of
  W_2^2 of the projections <theta, x>, computed by sorting). The same P directions (seeded per task
  and observation) serve every method. Why sliced and not Sinkhorn: with S = 64 samples in d = 64
  dimensions the empirical (regularised) W_2 of two samples of the *same* law is dominated by the
  n^(-1/d) sampling error, whereas SW_2's sample complexity does not depend on d (Nadjahi et al.,
  NeurIPS 2020), so the floor below is small next to the gaps between samplers; and it costs
  P one-dimensional sorts instead of an iterative O(S^2) solver per observation.
* ``floor`` = SW_2(E_i', E_i): the Monte-Carlo floor, the distance an exact sampler reaches with S
  samples. A sampler at the floor is indistinguishable from the exact posterior at this S.
* ``bias2`` and ``spread``: :func:`emprior.evaluation.estep_check.score_samples` (normalised squared
  bias of the sample mean, minus its own sampling noise; sample variance over tr Sigma_i; exact: 0, 1).
* ``coverage90``: the fraction of samples x_isj inside the exact posterior's central 90 % interval of
  pixel j, [q_0.05, q_0.95] of the 1-d mixture marginal sum_k w_k' N(m_kj', C_k,jj') (quantiles by
  bisection of its CDF). An exact sampler covers 0.9 in expectation; under-dispersed or biased
  samplers less, over-dispersed ones more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ot
import torch
from torch import Tensor

from emprior.evaluation.estep_check import score_samples as estep_scores
from emprior.priors.mixture import GaussianMixture

__all__ = ["coverage", "distribution_scores", "mixture_quantiles", "sliced_w2"]


def sliced_w2(x: np.ndarray, ref: np.ndarray, n_projections: int, seed: int) -> float:
    """SW_2 between the empirical laws of x (S, d) and ref (S', d); the directions depend on ``seed``
    only, so two calls with one seed compare against ``ref`` along the same directions."""
    return float(ot.sliced_wasserstein_distance(np.ascontiguousarray(x, dtype=np.float64),
                                                np.ascontiguousarray(ref, dtype=np.float64),
                                                n_projections=n_projections, p=2, seed=seed))


def mixture_quantiles(post: GaussianMixture, q: tuple[float, ...], iters: int = 80) -> Tensor:
    """Per-coordinate quantiles (len(q), d) of sum_k w_k N(mu_k, C_k): bisection on the marginal CDF
    F_j(t) = sum_k w_k Phi((t - mu_kj) / sqrt(C_k,jj)), bracketed by mu +/- 12 std (error 2^-iters)."""
    w = post.weights.double()
    mu = post.means.double()
    sd = torch.diagonal(post.covs.double(), dim1=-2, dim2=-1).clamp(min=1e-300).sqrt()  # (K, d)
    lo0, hi0 = (mu - 12 * sd).amin(0), (mu + 12 * sd).amax(0)
    out = []
    for level in q:
        lo, hi = lo0.clone(), hi0.clone()
        for _ in range(iters):
            mid = (lo + hi) / 2
            cdf = (w[:, None] * torch.special.ndtr((mid[None] - mu) / sd)).sum(0)
            below = cdf < level
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        out.append((lo + hi) / 2)
    return torch.stack(out)


def coverage(samples: Tensor, lo: Tensor, hi: Tensor) -> float:
    """Fraction of samples (N, S, d) with lo_ij <= x_isj <= hi_ij, lo and hi (N, d)."""
    inside = (samples >= lo[:, None]) & (samples <= hi[:, None])
    return float(inside.double().mean())


def distribution_scores(samples: Tensor, exact: Tensor, independent: Tensor, means: Tensor, covs: Tensor,
                        intervals: Tensor, n_projections: int, seed: int) -> dict[str, Any]:
    """The module docstring's scores of ``samples`` (N, S, d) against the exact draws ``exact``
    (N, S', d), with ``independent`` (N, S'', d) a second exact draw for the floor, the exact moments
    means (N, d) and covs (N, d, d), and the central intervals (N, 2, d) ([q_0.05, q_0.95])."""
    x = samples.double().reshape(samples.shape[0], samples.shape[1], -1)
    e = exact.double().reshape(exact.shape[0], exact.shape[1], -1).numpy()
    e2 = independent.double().reshape(independent.shape[0], independent.shape[1], -1).numpy()
    dist = np.array([sliced_w2(x[i].numpy(), e[i], n_projections, seed + i) for i in range(len(x))])
    floor = np.array([sliced_w2(e2[i], e[i], n_projections, seed + i) for i in range(len(x))])
    moments = estep_scores(x, means.double(), covs.double())
    n = len(x)
    return {
        "distance": float(dist.mean()),
        "distance_se": float(dist.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "floor": float(floor.mean()),
        "bias2": moments["bias2"],
        "spread": moments["spread"],
        "coverage90": coverage(x, intervals[:, 0], intervals[:, 1]),
    }
