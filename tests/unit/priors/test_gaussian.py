"""Exact Gaussian / Gaussian-mixture priors and denoisers (emprior.priors.gaussian, emprior.priors.mixture).

Identities are checked in float64 to 1e-8 unless stated; Monte Carlo checks state their sample size
and use 4-standard-error bounds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from emprior.core.errors import ArtifactError
from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian, gaussian_posterior
from emprior.priors.mixture import GaussianMixture, GaussianMixtureDenoiser

D64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(d: int, g: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    L = torch.randn(d, d, generator=g, dtype=D64)
    return L @ L.T / d + jitter * torch.eye(d, dtype=D64)


def _low_rank(g: torch.Generator, shape=(2, 3), r: int = 2, tau: float = 0.3) -> LowRankGaussian:
    d = math.prod(shape)
    U, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=D64))
    s = torch.rand(r, generator=g, dtype=D64) * 3 + 0.5
    mean = torch.randn(d, generator=g, dtype=D64)
    return LowRankGaussian(mean, U, s, tau, shape)


def _random_mixture(g: torch.Generator, K: int = 3, d: int = 3, isotropic: bool = False) -> GaussianMixture:
    w = torch.rand(K, generator=g, dtype=D64) + 0.2
    mu = 2 * torch.randn(K, d, generator=g, dtype=D64)
    if isotropic:
        covs = torch.rand(K, generator=g, dtype=D64) + 0.2
    else:
        covs = torch.stack([_random_spd(d, g) for _ in range(K)])
    return GaussianMixture(w, mu, covs)


# ---------------------------------------------------------------------------------------- low rank
def test_low_rank_ops_match_dense():
    g = _gen(0)
    p = _low_rank(g)
    C = p.dense_cov()
    eig = torch.linalg.eigvalsh(C)
    assert torch.allclose(eig[:4], torch.full((4,), 0.3, dtype=D64), atol=1e-12)  # tau on the complement
    v = torch.randn(4, 2, 3, generator=g, dtype=D64)
    vf = v.reshape(4, 6)
    assert torch.allclose(p.cov_matvec(v).reshape(4, 6), vf @ C, atol=1e-12)
    sigma = torch.tensor([0.01, 0.5, 2.0, 30.0], dtype=D64)
    out = p.cov_inv_plus_matvec(v, sigma).reshape(4, 6)
    I = torch.eye(6, dtype=D64)
    for b in range(4):
        ref = torch.linalg.inv(torch.linalg.inv(C) + I / sigma[b] ** 2) @ vf[b]
        assert torch.allclose(out[b], ref, atol=1e-10)
    # a float sigma is broadcast to the batch
    assert torch.allclose(p.cov_inv_plus_matvec(v, 0.5)[1], p.cov_inv_plus_matvec(v, sigma)[1])


def test_low_rank_singular_cov_inv_plus_is_the_exact_posterior_cov():
    """tau = 0 (singular Sigma): (Sigma^-1 + s^-2)^-1 is read as Sigma - Sigma (Sigma + s^2)^-1 Sigma."""
    g = _gen(1)
    p = _low_rank(g, shape=(5,), r=2, tau=0.0)
    C = p.dense_cov()
    v = torch.randn(3, 5, generator=g, dtype=D64)
    s2 = 0.7**2
    ref = (C - C @ torch.linalg.inv(C + s2 * torch.eye(5, dtype=D64)) @ C) @ v.T
    assert torch.allclose(p.cov_inv_plus_matvec(v, 0.7), ref.T, atol=1e-12)


def test_full_and_state_dict_roundtrip():
    g = _gen(2)
    C = _random_spd(4, g)
    mean = torch.randn(4, generator=g, dtype=D64)
    p = LowRankGaussian.full(mean, C, event_shape=(2, 2))
    assert torch.allclose(p.dense_cov(), C, atol=1e-12)
    assert p.tau == 0.0 and p.U.shape == (4, 4) and p.event_shape == (2, 2)
    q = LowRankGaussian.from_state_dict(p.state_dict())
    assert torch.equal(q.U, p.U) and torch.equal(q.mean, p.mean) and q.event_shape == (2, 2)
    with pytest.raises(ArtifactError, match="'U'"):
        LowRankGaussian.from_state_dict({k: v for k, v in p.state_dict().items() if k != "U"})
    with pytest.raises(ValueError, match="orthonormal"):
        LowRankGaussian(mean, 2 * torch.eye(4, dtype=D64), torch.ones(4, dtype=D64))
    with pytest.raises(ValueError, match="s:"):
        LowRankGaussian(mean, torch.eye(4, dtype=D64), -torch.ones(4, dtype=D64))
    with pytest.raises(ValueError, match="semi-definite"):
        LowRankGaussian.full(mean, -C)


def test_low_rank_sampling_moments():
    """n = 100 000 samples: mean within 4 standard errors per coordinate, covariance within 0.03 (abs)."""
    g = _gen(3)
    p = _low_rank(g)
    n = 100_000
    x = p.sample(n, generator=_gen(4))
    assert x.shape == (n, 2, 3)
    xf = x.reshape(n, 6)
    C = p.dense_cov()
    se = (torch.diagonal(C) / n).sqrt()
    assert ((xf.mean(0) - p.mean).abs() < 4 * se).all()
    assert (torch.cov(xf.T) - C).abs().max() < 0.03


# ------------------------------------------------------------------------------------ denoisers
def test_gaussian_denoiser_dense_formula_and_jacobian():
    g = _gen(5)
    p = _low_rank(g)
    den = GaussianDenoiser(p)
    C, mu = p.dense_cov(), p.mean
    x_t = torch.randn(3, 2, 3, generator=g, dtype=D64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=D64)
    out = den(x_t, sigma)
    assert out.shape == x_t.shape
    I = torch.eye(6, dtype=D64)
    for b in range(3):
        G = C @ torch.linalg.inv(C + sigma[b] ** 2 * I)
        assert torch.allclose(out[b].reshape(6), mu + G @ (x_t[b].reshape(6) - mu), atol=1e-12)
        # Eq. (21): V[x|x_t] = sigma^2 dE/dx_t and cov_matvec applies it
        J = jacobian(lambda z, sb=sigma[b]: den(z.reshape(1, 2, 3), sb).reshape(6), x_t[b].reshape(6))
        v = torch.randn(1, 2, 3, generator=g, dtype=D64)
        cv = den.cov_matvec(x_t[b : b + 1], sigma[b], v).reshape(6)
        assert torch.allclose(cv, sigma[b] ** 2 * J @ v.reshape(6), atol=1e-10)
        assert torch.allclose(J, J.T, atol=1e-12)


def test_gaussian_denoiser_matches_one_component_mixture_and_float32_params():
    g = _gen(6)
    C = _random_spd(4, g)
    mu = torch.randn(4, generator=g, dtype=D64)
    den = GaussianDenoiser(LowRankGaussian.full(mu, C))
    mix = GaussianMixtureDenoiser(GaussianMixture(torch.ones(1), mu[None], C[None]))
    x_t = torch.randn(5, 4, generator=g, dtype=D64)
    sigma = torch.logspace(-2, 1, 5, dtype=D64)
    assert torch.allclose(den(x_t, sigma), mix(x_t, sigma), atol=1e-10)
    v = torch.randn(5, 4, generator=g, dtype=D64)
    assert torch.allclose(den.cov_matvec(x_t, sigma, v), mix.cov_matvec(x_t, sigma, v), atol=1e-10)
    # parameters stored in float32 (checkpoints) are cast to the input dtype
    den32 = GaussianDenoiser(LowRankGaussian.full(mu.float(), C.float()))
    out = den32(x_t, sigma)
    assert out.dtype == D64 and torch.allclose(out, den(x_t, sigma), atol=1e-4)


@pytest.mark.parametrize("isotropic", [False, True])
def test_mixture_denoiser_tweedie_identities(isotropic):
    """Eq. (24): E[x|x_t] = x_t + s^2 grad log p_s(x_t); Eq. (21): V[x|x_t] = s^2 dE/dx_t (1e-8)."""
    g = _gen(7)
    mix = _random_mixture(g, K=4, d=3, isotropic=isotropic)
    den = GaussianMixtureDenoiser(mix)
    for s in (0.05, 0.7, 3.0):
        x_t = (mix.sample(4, generator=g) + s * torch.randn(4, 3, generator=g, dtype=D64)).requires_grad_(
            True
        )
        logp = mix.noised(s).log_prob(x_t).sum()
        (grad,) = torch.autograd.grad(logp, x_t)
        E = den(x_t, s)
        assert torch.allclose(E, x_t + s**2 * grad, atol=1e-8, rtol=0)
        V = den.covariance(x_t.detach(), s)
        for b in range(4):
            J = jacobian(lambda z, s=s: den(z[None], s)[0], x_t[b].detach())
            assert torch.allclose(V[b], s**2 * J, atol=1e-8, rtol=0)
        v = torch.randn(4, 3, generator=g, dtype=D64)
        Vv = den.cov_matvec(x_t.detach(), s, v)
        assert torch.allclose(Vv, (V @ v[:, :, None])[..., 0], atol=1e-10)
        assert (torch.linalg.eigvalsh(V) > 0).all()


def test_mixture_log_prob_matches_scipy_and_far_points_are_finite():
    from scipy.stats import multivariate_normal

    g = _gen(8)
    mix = _random_mixture(g, K=3, d=2)
    x = torch.randn(6, 2, generator=g, dtype=D64) * 3
    w, mu, C = mix.weights.numpy(), mix.means.numpy(), mix.covs.numpy()
    ref = [
        math.log(sum(w[k] * multivariate_normal(mu[k], C[k]).pdf(xi) for k in range(3))) for xi in x.numpy()
    ]
    assert torch.allclose(mix.log_prob(x), torch.tensor(ref, dtype=D64), atol=1e-10)
    # 1e3 away from every component: densities underflow, logsumexp and responsibilities do not
    far = torch.full((2, 2), 1e3, dtype=D64)
    assert torch.isfinite(mix.log_prob(far)).all()
    out = GaussianMixtureDenoiser(mix)(far, 0.01)
    assert torch.isfinite(out).all()


def test_mixture_sampling_moments():
    """n = 200 000 samples: mean within 4 standard errors per coordinate; covariance within 0.05 (abs)."""
    g = _gen(9)
    mix = _random_mixture(g, K=3, d=3)
    n = 200_000
    x = mix.sample(n, generator=_gen(10))
    m, C = mix.moments()
    se = (torch.diagonal(C) / n).sqrt()
    assert ((x.mean(0) - m).abs() < 4 * se).all()
    assert (torch.cov(x.T) - C).abs().max() < 0.05


def test_gaussian_posterior_matches_joint_conditioning():
    """x | y from the joint covariance [[C, C A^T], [A C, A C A^T + s^2 I]] (Schur complement)."""
    g = _gen(11)
    d, m = 5, 2
    C = _random_spd(d, g)
    mu = torch.randn(d, generator=g, dtype=D64)
    A = torch.randn(m, d, generator=g, dtype=D64)
    y = torch.randn(m, generator=g, dtype=D64)
    pm, pc = gaussian_posterior(mu, C, A, y, 0.3)
    Syy = A @ C @ A.T + 0.09 * torch.eye(m, dtype=D64)
    Sxy = C @ A.T
    assert torch.allclose(pm, mu + Sxy @ torch.linalg.solve(Syy, y - A @ mu), atol=1e-12)
    assert torch.allclose(pc, C - Sxy @ torch.linalg.solve(Syy, Sxy.T), atol=1e-12)
    with pytest.raises(ValueError, match="A:"):
        gaussian_posterior(mu, C, torch.zeros(m, d + 1, dtype=D64), y, 0.3)


def test_mixture_posterior_vs_brute_force_grid():
    """2-d mixture, A (1, 2): posterior mixture vs p(x) p(y|x) integrated on a 801 x 801 grid
    (spacing 0.02 on [-8, 8]^2): normaliser-free log density to 1e-8, mean and covariance to 1e-6."""
    g = _gen(12)
    mix = _random_mixture(g, K=3, d=2)
    mix = GaussianMixture(mix.weights, mix.means.clamp(-3, 3), mix.covs)
    A = torch.tensor([[1.0, -0.5]], dtype=D64)
    y = torch.tensor([0.7], dtype=D64)
    noise = 0.4
    post = mix.posterior(A, y, noise)

    t = torch.linspace(-8, 8, 801, dtype=D64)
    X = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    log_joint = mix.log_prob(X) - 0.5 * ((y - X @ A.T) ** 2).sum(1) / noise**2
    w = torch.softmax(log_joint, 0)  # brute-force importance weights on the grid
    mean = w @ X
    cov = (w[:, None] * (X - mean)).T @ (X - mean)
    pm, pc = post.moments()
    assert torch.allclose(pm, mean, atol=1e-6)
    assert torch.allclose(pc, cov, atol=1e-6)
    # log p(x|y) - [log p(x) + log p(y|x)] is a constant (the evidence) over x
    diff = post.log_prob(X[::997]) - log_joint[::997]
    assert (diff - diff.mean()).abs().max() < 1e-8


def test_mixture_posterior_1d_importance_sampling():
    """1-d bimodal prior, y = x + 0.5 e: posterior mean vs self-normalised importance sampling with
    n = 400 000 prior samples, within 4 Monte Carlo standard errors."""
    mix = GaussianMixture(
        torch.tensor([0.3, 0.7]), torch.tensor([[-2.0], [1.5]], dtype=D64), torch.tensor([0.5, 0.8])
    )
    A = torch.ones(1, 1, dtype=D64)
    y = torch.tensor([0.2], dtype=D64)
    post = mix.posterior(A, y, 0.5)
    x = mix.sample(400_000, generator=_gen(13))[:, 0]
    w = torch.softmax(-0.5 * (y - x) ** 2 / 0.25, 0)
    est = (w * x).sum()
    ess = 1 / (w**2).sum()
    pm, pc = post.moments()
    se = (pc[0, 0] / ess).sqrt()
    assert abs(est - pm[0]) < 4 * se
    assert abs(post.weights.sum().item() - 1) < 1e-12


def test_validation_messages():
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.ones(2), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(-torch.ones(2), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.ones(2), torch.zeros(2, 3), torch.ones(2, 3))
    den = GaussianMixtureDenoiser(GaussianMixture(torch.ones(2), torch.zeros(2, 3), 1.0))
    with pytest.raises(ValueError, match="x_t"):
        den(torch.zeros(4, 5), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        den(torch.zeros(4, 3), torch.ones(3))
