"""Contract of every registered posterior sampler on a Gaussian prior with its exact denoiser:
the estimate has the input's shape, dtype and device and is finite; a sampler that declares options
under which it is exact (``exact_on_gaussian``) matches the closed-form E[x | x_t, y]."""

import numpy as np
import pytest
import torch

from emprior.operators import make_operator
from emprior.posterior import POSTERIOR_SAMPLERS, make_posterior
from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian

D, N, NOISE = 6, 5, 0.1


def _problem(dtype):
    g = torch.Generator().manual_seed(0)
    b = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = b @ b.T / D + 0.2 * torch.eye(D, dtype=torch.float64)
    mean = torch.randn(D, generator=g, dtype=torch.float64)
    prior = LowRankGaussian.full(mean, cov)
    op = make_operator("projection", N, (D,), NOISE, np.random.default_rng(1), m=3)
    x = prior.sample(N, g)
    y = op.observe(x, generator=g).to(dtype)
    return prior, op, y, mean, cov


def _exact_mean(op, y, x_t, sigma, mean, cov):
    """E[x | x_t, y] for x ~ N(mean, cov), x_t = x + sigma z, y = A x + noise_std e (dense, float64)."""
    out = []
    eye = torch.eye(D, dtype=torch.float64)
    for i in range(len(y)):
        A = torch.stack([op[[i]].A(eye[j:j + 1].to(y.dtype)).double().reshape(-1) for j in range(D)], 1)
        P = torch.linalg.inv(cov) + eye / sigma**2 + A.T @ A / NOISE**2
        rhs = torch.linalg.solve(cov, mean) + x_t[i].double() / sigma**2 + A.T @ y[i].double().reshape(-1) / NOISE**2
        out.append(torch.linalg.solve(P, rhs))
    return torch.stack(out)


@pytest.mark.parametrize("name", POSTERIOR_SAMPLERS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_and_finite(name, dtype):
    prior, op, y, _, _ = _problem(dtype)
    post = make_posterior(name, GaussianDenoiser(prior.to(dtype=dtype)), op, y)
    x_t = torch.randn(N, D, dtype=dtype, generator=torch.Generator().manual_seed(2))
    for sigma in (5.0, 0.5, 0.02):
        out = post(x_t, sigma)
        assert out.shape == x_t.shape and out.dtype == dtype and out.device == x_t.device
        assert torch.isfinite(out).all() and not out.requires_grad


@pytest.mark.parametrize("name", [e.name for e in POSTERIOR_SAMPLERS
                                  if getattr(e.obj, "exact_on_gaussian", None) is not None])
def test_exact_where_it_claims(name):
    prior, op, y, mean, cov = _problem(torch.float64)
    opts = POSTERIOR_SAMPLERS.get(name).exact_on_gaussian
    post = make_posterior(name, GaussianDenoiser(prior), op, y, **opts)
    x_t = mean + 0.7 * torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for sigma in (2.0, 0.3, 0.05):
        torch.testing.assert_close(post(x_t, sigma), _exact_mean(op, y, x_t, sigma, mean, cov), rtol=1e-6, atol=1e-6)


def test_some_sampler_claims_exactness():
    assert any(getattr(e.obj, "exact_on_gaussian", None) is not None for e in POSTERIOR_SAMPLERS)
