"""Iteration 1's E-step against the exact Gaussian posterior (emprior.evaluation.estep_check)."""

import numpy as np
import pytest
import torch

from emprior.core.job import Job
from emprior.methods import make_method
from emprior.core.errors import ArtifactError, ConfigError
from emprior.evaluation.estep_check import DENSE_MAX, check_estep, exact_posteriors, score_samples
from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian
from emprior.priors.checkpoint import Prior
from emprior.data.observations import Observations
from emprior.operators import make_operator, measured_system


def _diem(**posterior) -> dict:
    return {"method": "diem", "posterior": {"method": "mmps", **posterior}}


def _job(exp: dict, variant: str = "v") -> Job:
    return Job({"seed": 0, "experiments": {"toy": exp}}, "toy", variant, 1)


def _gaussian(d: int, seed: int = 0) -> LowRankGaussian:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    return LowRankGaussian.full(torch.randn(d, generator=g, dtype=torch.float64), b @ b.T / d + 0.1 * torch.eye(d))


def test_measured_system_keeps_the_measured_rows_and_values():
    op = make_operator("pixel_mask", 3, (1, 4, 4), 0.1, np.random.default_rng(0), deleted=0.5)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    y = op.A(x)
    for i in range(3):
        a, y_i = measured_system(op, i, y)
        keep = np.flatnonzero(op.params()["mask"][i].reshape(-1))
        assert a.shape == (len(keep), 16)
        torch.testing.assert_close(y_i, y[i].reshape(-1)[torch.from_numpy(keep)], rtol=0, atol=0)
        torch.testing.assert_close(a @ x[i].reshape(-1), y_i, rtol=0, atol=1e-12)


def test_exact_posteriors_match_the_precision_form():
    d, noise = 5, 0.1
    prior = _gaussian(d)
    op = make_operator("projection", 4, (d,), noise, np.random.default_rng(1), m=2)
    y = op.observe(prior.sample(4, torch.Generator().manual_seed(2)).float().reshape(4, d)).double()
    means, covs = exact_posteriors(prior, op, y, noise)
    cov_inv = torch.linalg.inv(prior.dense_cov().double())
    for i in range(4):
        a, y_i = measured_system(op, i, y)
        precision = cov_inv + a.T @ a / noise**2  # Sigma_i^-1 = Sigma^-1 + A^T A / sigma_y^2
        c = torch.linalg.inv(precision)
        m = c @ (cov_inv @ prior.mean.double() + a.T @ y_i / noise**2)
        assert torch.allclose(covs[i], c, atol=1e-9) and torch.allclose(means[i], m, atol=1e-9)


def test_scores_of_exact_biased_and_shrunk_samples():
    n, r, d = 200, 16, 6
    g = torch.Generator().manual_seed(3)
    means = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    covs = b @ b.transpose(1, 2) / d + 0.05 * torch.eye(d)
    z = torch.randn(n, r, d, generator=g, dtype=torch.float64)
    exact = means[:, None] + z @ torch.linalg.cholesky(covs).transpose(1, 2)
    s = score_samples(exact, means, covs)
    assert abs(s["spread"] - 1) < 4 * s["spread_se"] and abs(s["bias2"]) < 4 * s["bias2_se"]
    # shrink around the mean by c: spread c^2; shift by delta_i with ||delta_i||^2 = 0.5 tr Sigma_i: bias2 0.5
    shrunk = score_samples(means[:, None] + 0.7 * (exact - means[:, None]), means, covs)
    assert abs(shrunk["spread"] - 0.49) < 4 * shrunk["spread_se"]
    tr = torch.diagonal(covs, dim1=1, dim2=2).sum(-1)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    delta = u / u.norm(dim=1, keepdim=True) * (0.5 * tr).sqrt()[:, None]
    biased = score_samples(exact + delta[:, None], means, covs)
    assert abs(biased["bias2"] - 0.5) < 4 * biased["bias2_se"] and biased["bias2_se"] < 0.05
    with pytest.raises(ValueError, match="repeats"):
        score_samples(exact[:, :1], means, covs)
    one = score_samples(exact[:1], means[:1], covs[:1])  # one observation: no standard error (None, not NaN)
    assert one["spread_se"] is None and one["bias2_se"] is None and one["spread"] > 0


def _setup(d=4, n=128, noise=0.05):
    gauss = _gaussian(d, seed=4).to(dtype=torch.float32)
    prior = Prior("gaussian", (d,), GaussianDenoiser(gauss), {}, gaussian=gauss)
    op = make_operator("projection", n, (d,), noise, np.random.default_rng(5), m=2)
    y = op.observe(gauss.sample(n, torch.Generator().manual_seed(6)).reshape(n, d))
    obs = Observations(y=y, index=np.arange(n), op=op, noise_std=noise, seed=0)
    exp = {"schedule": {"sigma_min": 1e-3, "sigma_max": 10.0},
           "estep": {"sampler": "ddpm", "steps": 256, "block_size": 512, "shards": 1}}
    return prior, obs, exp


def test_exact_covariance_samples_the_exact_posterior_and_sigma_t_does_not():
    prior, obs, exp = _setup()
    run = {name: check_estep(prior, make_method(v, exp), obs, _job(exp, name), observations=128, repeats=16)
           for name, v in {"tweedie": _diem(covariance="tweedie", solver="cg", maxiter=4),
                           "sigma_t": _diem(covariance="sigma_t", maxiter=16)}.items()}
    t, h = run["tweedie"], run["sigma_t"]
    assert t["observations"] == 128 and t["repeats"] == 16
    # a linear denoiser makes Tweedie's covariance exact: only the 256-step discretisation is left
    # (seeds 0-3: spread 0.93-1.00, bias2 -0.002-0.010; Sigma_t: bias2 0.12-0.17, spread 1.07-1.16)
    assert 0.85 < t["spread"] < 1.1 and abs(t["bias2"]) < 0.04
    assert h["bias2"] > 0.06 and h["bias2"] > t["bias2"] + 2 * (h["bias2_se"] + t["bias2_se"])


def test_check_needs_the_gaussian_q0_and_valid_sizes():
    prior, obs, exp = _setup()
    method = make_method(_diem(covariance="inv", maxiter=16), exp)
    learned = Prior("denoiser", (4,), prior.denoiser, {})
    with pytest.raises(ArtifactError, match="Gaussian q_0"):
        check_estep(learned, method, obs, _job(exp))
    with pytest.raises(ConfigError, match="evaluate.estep_check.repeats"):
        check_estep(prior, method, obs, _job(exp), observations=4, repeats=1)


def test_large_images_are_skipped_with_a_reason():
    d = DENSE_MAX + 1
    gauss = LowRankGaussian(mean=torch.zeros(d), U=torch.eye(d, 1), s=torch.ones(1), tau=0.5, event_shape=(d,))
    prior = Prior("gaussian", (d,), GaussianDenoiser(gauss), {}, gaussian=gauss)
    op = make_operator("identity", 1, (d,), 0.1, np.random.default_rng(0))
    obs = Observations(y=torch.zeros(2, d), index=np.arange(2), op=op, noise_std=0.1, seed=0)
    res = check_estep(prior, make_method(_diem(covariance="inv", maxiter=16), {}), obs, _job({}))
    assert res["observations"] == 0 and f"d = {d} > {DENSE_MAX}" in res["skipped"]
