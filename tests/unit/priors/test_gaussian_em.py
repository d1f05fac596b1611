"""Gaussian EM for q_0: exact E-step, closed-form M-step, monotone evidence, recovers the truth."""

import numpy as np
import torch

from emprior.priors.gaussian_em import dense_operator_matrices, fit_gaussian_em, ppca_project
from emprior.operators import make_operator


def _problem(n=3000, d=5, m=2, seed=0):
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    L = torch.as_tensor(rng.normal(size=(d, d)), dtype=torch.float64) / np.sqrt(d)
    cov = L @ L.T + 0.1 * torch.eye(d, dtype=torch.float64)
    mean = torch.as_tensor(rng.normal(size=d))
    x = mean + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    op = make_operator("projection", n, (d,), 1e-2, rng, m=m)
    y = op.observe(x.float(), generator=g)
    return mean, cov, op, y


def test_dense_matrices_match_operator():
    _, _, op, y = _problem(n=4)
    A = dense_operator_matrices(op, 4, (5,))
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(torch.einsum("nmd,nd->nm", A, x), op.A(x))


def test_evidence_increases_and_truth_is_recovered():
    """Full-rank EM on 3000 rank-2 projections of a 5-d Gaussian: the mean log-evidence never decreases
    (EM's guarantee, Eqs. 8-11) and the fit is close to the truth (measured: mean error 0.076,
    covariance relative error 0.052 after 40 iterations; evidence -2.89 -> -2.35)."""
    mean, cov, op, y = _problem()
    res = fit_gaussian_em(op, y, (5,), 1e-2, iterations=40, rank=None)
    ev = np.array(res.log_evidence)
    assert np.all(np.diff(ev) > -1e-8), ev
    assert ev[-1] > ev[0] + 0.3
    fitted = (res.U * res.s) @ res.U.T + res.tau * torch.eye(5, dtype=torch.float64)
    assert torch.linalg.norm(res.mean - mean) < 0.15
    assert torch.linalg.norm(fitted - cov) / torch.linalg.norm(cov) < 0.25


def test_low_rank_ppca_is_monotone_too():
    mean, cov, op, y = _problem(n=1500, seed=1)
    res = fit_gaussian_em(op, y, (5,), 1e-2, iterations=15, rank=2)
    assert res.U.shape == (5, 2) and res.tau > 0
    assert np.all(np.diff(res.log_evidence) > -1e-8)


def test_ppca_projection_closed_form():
    """ML PPCA of a covariance: top-r eigenpairs, tau = mean of the discarded eigenvalues."""
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    lam = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.3, 0.2], dtype=torch.float64)
    cov = (Q * lam) @ Q.T
    U, s, tau = ppca_project(cov, 2)
    assert abs(tau - lam[2:].mean().item()) < 1e-10
    torch.testing.assert_close(s, lam[:2] - tau)
    torch.testing.assert_close((U.T @ Q[:, :2]).abs(), torch.eye(2, dtype=torch.float64), atol=1e-8, rtol=0)
