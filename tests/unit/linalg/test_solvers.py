"""Batched CG / GMRES (emprior.linalg): exactness, per-sample coefficients, breakdown safety.

All checks are float64; "converges" means within 1e-8 of torch.linalg.solve.
"""

from __future__ import annotations

import pytest
import torch

from emprior.linalg import batch_dot, cg, gmres


def _spd(B: int, n: int, g: torch.Generator, cond: float = 50.0) -> torch.Tensor:
    """B random SPD matrices with eigenvalues log-spaced in [1, cond]."""
    Q, _ = torch.linalg.qr(torch.randn(B, n, n, generator=g, dtype=torch.float64))
    ev = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    ev = ev[torch.randperm(n, generator=g)]
    return Q @ torch.diag_embed(ev.expand(B, n)) @ Q.transpose(1, 2)


def _mv(M: torch.Tensor, shape: tuple[int, ...]):
    """Batched matvec over (B, *shape) tensors for matrices M (B, n, n), n = prod(shape)."""

    def f(v: torch.Tensor) -> torch.Tensor:
        return (M @ v.reshape(v.shape[0], -1, 1)).reshape(v.shape[0], *shape)

    return f


def _solve(M: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve(M, b.reshape(b.shape[0], -1)).reshape(b.shape)


def test_cg_spd_converges_in_n_iterations():
    g = torch.Generator().manual_seed(0)
    B, shape = 5, (3, 4)  # n = 12, event shape is not flat on purpose
    n = 12
    M = _spd(B, n, g)
    b = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    x, info = cg(_mv(M, shape), b, maxiter=n)
    ref = _solve(M, b)
    assert (x - ref).abs().max().item() < 1e-8
    assert info.iterations == n and info.breakdowns == 0 and info.matvecs == n
    true_res = (b - _mv(M, shape)(x)).reshape(B, -1).norm(dim=1)
    assert torch.allclose(info.residual_norm, true_res, atol=1e-9)


def test_cg_with_x0_and_tolerance_stops_early():
    g = torch.Generator().manual_seed(1)
    B, n = 5, 10
    M = _spd(B, n, g)
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    ref = _solve(M, b)
    x0 = ref + 1e-3 * torch.randn(B, n, generator=g, dtype=torch.float64)
    x, info = cg(_mv(M, (n,)), b, x0=x0, maxiter=100, tol=1e-10)
    assert (x - ref).abs().max().item() < 1e-8
    assert info.iterations <= n + 2  # stopped by tol, far before maxiter
    assert info.matvecs == info.iterations + 1  # + the r_0 = b - M x_0 product
    assert (info.residual_norm <= 1e-10).all()


def test_cg_one_step_closed_form():
    """maxiter=1 from x_0 = 0: x = (r.r / r.M r) r with r = b, per sample."""
    g = torch.Generator().manual_seed(2)
    B, n = 4, 7
    M = _spd(B, n, g)
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    x, info = cg(_mv(M, (n,)), b, maxiter=1)
    Mb = (M @ b.unsqueeze(-1)).squeeze(-1)
    expected = ((b * b).sum(1) / (b * Mb).sum(1)).unsqueeze(1) * b
    assert torch.allclose(x, expected, rtol=0, atol=1e-13)
    assert info.iterations == 1


@pytest.mark.parametrize("solver", [cg, gmres])
def test_per_sample_coefficients(solver):
    """Samples with very different scales (M_b = c_b M_0) need different step sizes; every truncated
    iterate (k = 1, 2, 3) must equal the one obtained by solving each system alone."""
    g = torch.Generator().manual_seed(3)
    n = 6
    M0 = _spd(1, n, g)[0]
    scales = torch.tensor([1e-3, 1.0, 50.0], dtype=torch.float64)
    M = scales[:, None, None] * M0 + torch.stack([torch.zeros(n, n)] * 2 + [torch.eye(n)]).double()
    b = torch.randn(3, n, generator=g, dtype=torch.float64)
    for k in (1, 2, 3):
        xb, _ = solver(_mv(M, (n,)), b, maxiter=k)
        for i in range(3):
            xi, _ = solver(_mv(M[i : i + 1], (n,)), b[i : i + 1], maxiter=k)
            assert torch.allclose(xb[i], xi[0], rtol=1e-12, atol=1e-12), (k, i)
    # and a shared-alpha implementation would not pass: the samples' one-step alphas differ a lot
    Mb = (M @ b.unsqueeze(-1)).squeeze(-1)
    alphas = (b * b).sum(1) / (b * Mb).sum(1)
    assert alphas.max() / alphas.min() > 100


def test_gmres_nonsymmetric_converges_in_n_steps():
    g = torch.Generator().manual_seed(4)
    B, shape, n = 5, (2, 5), 10
    M = torch.randn(B, n, n, generator=g, dtype=torch.float64) + 4 * torch.eye(n, dtype=torch.float64)
    assert not torch.allclose(M, M.transpose(1, 2))
    b = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    x, info = gmres(_mv(M, shape), b, maxiter=n)
    ref = _solve(M, b)
    assert (x - ref).abs().max().item() < 1e-8
    assert info.breakdowns == 0 and info.iterations == n
    assert (info.residual_norm < 1e-8).all()


def test_gmres_minimises_residual_over_krylov_space():
    """GMRES(k) residual = min over x in K_k(M, b) of ||b - M x||, checked by a dense least squares."""
    g = torch.Generator().manual_seed(5)
    B, n, k = 3, 8, 3
    M = torch.randn(B, n, n, generator=g, dtype=torch.float64) + 3 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    x, info = gmres(_mv(M, (n,)), b, maxiter=k)
    for i in range(B):
        K = torch.stack([torch.linalg.matrix_power(M[i], j) @ b[i] for j in range(k)], dim=1)
        c = torch.linalg.lstsq(M[i] @ K, b[i].unsqueeze(1)).solution
        best = (b[i] - M[i] @ K @ c.squeeze(1)).norm()
        assert abs(info.residual_norm[i].item() - best.item()) < 1e-10
        assert torch.allclose(x[i], (K @ c).squeeze(1), atol=1e-9)


def test_gmres_with_x0_and_lucky_breakdown():
    """M = 2 I: the Krylov space is invariant after one step (lucky breakdown), which is convergence."""
    g = torch.Generator().manual_seed(6)
    B, n = 4, 5
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    x0 = torch.randn(B, n, generator=g, dtype=torch.float64)
    x, info = gmres(lambda v: 2 * v, b, x0=x0, maxiter=5)
    assert torch.allclose(x, b / 2, atol=1e-12)
    assert info.breakdowns == 0 and info.iterations == 1 and info.matvecs == 2


@pytest.mark.parametrize("solver", [cg, gmres])
def test_indefinite_or_singular_is_finite_and_counted(solver):
    """Sample 0: SPD (must still be solved); sample 1: indefinite/singular system that breaks down."""
    n = 4
    M = torch.zeros(2, n, n, dtype=torch.float64)
    M[0] = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    if solver is cg:
        M[1] = torch.diag(torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64))  # b^T M b = 0
        b = torch.ones(2, n, dtype=torch.float64)
    else:
        M[1] = torch.diag(torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64))  # singular
        b = torch.ones(2, n, dtype=torch.float64)  # not in the range of M[1]
    x, info = solver(_mv(M, (n,)), b, maxiter=n)
    assert torch.isfinite(x).all()
    assert info.breakdowns == 1 and info.broken.tolist() == [False, True]
    assert torch.allclose(x[0], 1 / torch.diag(M[0]), atol=1e-10)
    assert torch.isfinite(info.residual_norm[0])
    if solver is gmres:  # least-squares solution on the range: x = (1, 1/2, 0, 0), residual sqrt(2)
        assert torch.allclose(x[1], torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64), atol=1e-10)
        assert abs(info.residual_norm[1].item() - 2**0.5) < 1e-10
    else:  # breaks down at the first step: the iterate stays x_0 = 0
        assert (x[1] == 0).all()


def test_cg_nonfinite_matvec_is_contained():
    """A matvec that returns NaN for one sample freezes that sample; the other is unaffected."""
    n = 3
    D = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)

    def mv(v):
        out = D * v
        out[1] = float("nan")
        return out

    b = torch.ones(2, n, dtype=torch.float64)
    for solver in (cg, gmres):
        x, info = solver(mv, b, maxiter=n)
        assert torch.isfinite(x).all() and info.breakdowns == 1
        assert torch.allclose(x[0], 1 / D[0], atol=1e-10)


def test_zero_rhs_and_validation():
    b = torch.zeros(2, 3, dtype=torch.float64)
    x, info = cg(lambda v: v, b, maxiter=3)
    assert (x == 0).all() and info.iterations == 0 and info.breakdowns == 0
    x, info = gmres(lambda v: v, b, maxiter=3)
    assert (x == 0).all() and info.iterations == 0
    assert batch_dot(torch.ones(2, 3), torch.full((2, 3), 2.0)).tolist() == [6.0, 6.0]
    with pytest.raises(ValueError, match="maxiter"):
        cg(lambda v: v, b, maxiter=-1)
    with pytest.raises(ValueError, match="x0"):
        gmres(lambda v: v, b, x0=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="tol"):
        cg(lambda v: v, b, tol=-1.0)


def test_converged_samples_are_not_counted_as_breakdowns():
    """Iterating past convergence (rounding-level residual) must not register a breakdown: a mask-like
    system sigma_y^2 + c A A^T has two distinct eigenvalues, so CG is exact after 2 steps."""
    torch.manual_seed(0)
    mask = (torch.rand(8, 64) < 0.25).float()
    M = 1e-6 + 0.3 * mask
    b = torch.randn(8, 64) * mask
    x, info = cg(lambda v: M * v, b, maxiter=16)
    assert info.breakdowns == 0
    assert info.iterations <= 3
    torch.testing.assert_close(x, b / M)


@pytest.mark.parametrize("solver", [cg, gmres])
@pytest.mark.parametrize("with_x0", [False, True])
def test_image_is_z_of_the_solution(solver, with_x0):
    """image=True: matvec returns (M u, Z u) with Z: R^4 -> R^(2x3); SolveInfo.image equals Z x for the
    returned x, to rounding, for samples that converge, stop early (tol), break down or hit maxiter,
    and the solve itself is unchanged (same x, same matvec count)."""
    g = torch.Generator().manual_seed(11)
    n, B = 4, 4
    M = _spd(B, n, g)
    M[2] = torch.diag(torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64))  # CG breaks down
    M[3] = torch.eye(n, dtype=torch.float64) * 2.0  # converges at once
    Z = torch.randn(B, 6, n, generator=g, dtype=torch.float64)
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    b[2] = 1.0
    x0 = 0.1 * torch.randn(B, n, generator=g, dtype=torch.float64) if with_x0 else None
    mv = _mv(M, (n,))

    def mv_z(v):
        return mv(v), (Z @ v.unsqueeze(-1)).reshape(v.shape[0], 2, 3)

    tol = torch.tensor([0.0, 1e-1, 0.0, 0.0], dtype=torch.float64)
    for maxiter in (1, 2, n):
        x_ref, info_ref = solver(mv, b, x0=x0, maxiter=maxiter, tol=tol)
        x, info = solver(mv_z, b, x0=x0, maxiter=maxiter, tol=tol, image=True)
        assert torch.equal(x, x_ref) and info.matvecs == info_ref.matvecs and info_ref.image is None
        expected = (Z @ x.unsqueeze(-1)).reshape(B, 2, 3)
        assert info.image.shape == (B, 2, 3)
        assert (info.image - expected).abs().max().item() < 1e-12, (solver.__name__, maxiter)
    if solver is cg:
        assert info.broken.tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="pair"):
        solver(mv, b, maxiter=1, image=True)


def test_image_without_a_matvec_is_none():
    """x = x_0 = 0 and nothing to do (b = 0): no matvec, so Z x (shape unknown) is reported as None."""
    b = torch.zeros(2, 3, dtype=torch.float64)
    for solver in (cg, gmres):
        x, info = solver(lambda v: (v, v), b, maxiter=2, image=True)
        assert (x == 0).all() and info.matvecs == 0 and info.image is None
