"""Analytic priors of the sampler benchmark besides the fitted digits mixture.

``gaussian_digits``: one Gaussian N(mu, C + reg_covar I), the digits' mean and covariance in [-1, 1]
(the q_0 of the EM runs). p(x | x_t) is then Gaussian, Tweedie's covariance (Eq. (21)) is exact and
MMPS with a converged solver is the exact posterior score: the control where a correct sampler must
reach the Monte-Carlo floor (up to the sampler's discretisation).

``gmm_separated``: K = len(classes) equally weighted components on the 8x8 digits in [-1, 1], one per
digit class c, N(mu_c, shrink * C_c + reg_covar I) with mu_c, C_c the class's mean and covariance
(scikit-learn's labels). Shrinking the covariances leaves the means apart but makes every component
tight, so p(x | x_t) at intermediate sigma_t and p(x | y) under a weak or noisy observation are
multi-modal: a Gaussian with the right first two moments (the moment projection behind MMPS, TMPD and
GDM, Eqs. (19)-(22)) puts its mass between the modes, where the prior has none. The ground truths
are drawn from the prior itself, so the prior is exactly right about them.

:func:`separation` reports min_{k != l} ||mu_k - mu_l|| / max_k sqrt(tr C_k), the distance between the
closest means in units of the widest component's radius (> 1: separated).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from emprior.core.errors import ConfigError
from emprior.core.rng import torch_generator
from emprior.priors.mixture import GaussianMixture

__all__ = ["gaussian_digits_prior", "separated_digits_mixture", "separation"]


def gaussian_digits_prior(reg_covar: float, n_truth: int, seed: int) -> tuple[GaussianMixture, Tensor]:
    """The one-component prior of the module docstring (float64) and ``n_truth`` ground truths
    (n, 1, 8, 8) drawn from it with the stream (seed, "gaussian-truth")."""
    from sklearn.datasets import load_digits

    images = load_digits().data / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    cov = np.cov(images, rowvar=False) + reg_covar * np.eye(images.shape[1])
    mix = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.from_numpy(images.mean(0))[None],
                          torch.from_numpy(cov)[None])
    x = mix.sample(n_truth, generator=torch_generator(seed, "gaussian-truth"))
    return mix, x.reshape(n_truth, 1, 8, 8)


def separated_digits_mixture(classes: list[int], shrink: float, reg_covar: float, n_truth: int,
                             seed: int) -> tuple[GaussianMixture, Tensor]:
    """The mixture of the module docstring (float64) and ``n_truth`` ground truths (n, 1, 8, 8) drawn
    from it with the stream (seed, "separated-truth")."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = images / 8.0 - 1.0  # [0, 16] -> [-1, 1], as the gmm_digits prior
    if len(set(classes)) != len(classes) or not all(c in range(10) for c in classes):
        raise ConfigError(f"sampler_benchmark.prior.classes: distinct digits 0..9 expected, got {classes!r}")
    means, covs = [], []
    for c in classes:
        xs = images[labels == c]
        means.append(xs.mean(0))
        covs.append(shrink * np.cov(xs, rowvar=False) + reg_covar * np.eye(xs.shape[1]))
    K = len(classes)
    mix = GaussianMixture(torch.full((K,), 1.0 / K, dtype=torch.float64), torch.from_numpy(np.stack(means)),
                          torch.from_numpy(np.stack(covs)))
    x = mix.sample(n_truth, generator=torch_generator(seed, "separated-truth"))
    return mix, x.reshape(n_truth, 1, 8, 8)


def separation(mix: GaussianMixture) -> float:
    """min_{k != l} ||mu_k - mu_l|| / max_k sqrt(tr C_k)."""
    dist = torch.cdist(mix.means, mix.means)
    dist.fill_diagonal_(float("inf"))
    return float(dist.min() / mix.lam.sum(1).sqrt().max())
