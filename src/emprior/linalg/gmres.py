"""Batched GMRES without restarts, for non-symmetric systems, one per batch element (see :mod:`.batched`)."""

from __future__ import annotations

import torch
from torch import Tensor

from emprior.linalg.batched import MatVec, SolveInfo, apply_matvec, batch_dot, check_system, col, initial_residual

__all__ = ["gmres"]


def gmres(
    matvec: MatVec,
    b: Tensor,
    x0: Tensor | None = None,
    maxiter: int = 1,
    tol: float | Tensor = 0.0,
    image: bool = False,
) -> tuple[Tensor, SolveInfo]:
    """GMRES (Saad & Schultz 1986) without restarts: ``maxiter`` Arnoldi steps, per sample.

    With r_0 = b - M x_0, beta = ||r_0||, v_1 = r_0 / beta, the Arnoldi process (modified
    Gram-Schmidt) builds an orthonormal basis V_k of the Krylov space K_k(M, r_0) and the upper
    Hessenberg H_k in R^{(k+1) x k} with M V_k = V_{k+1} H_k. The iterate is

        x_k = x_0 + V_k y_k,   y_k = argmin_y || beta e_1 - H_k y ||_2,

    the minimiser of ||b - M x|| over x_0 + K_k, so for a nonsingular M_b of size n, k = n steps
    give the exact solution. M need not be symmetric. Each sample has its own H_k and y_k; a sample
    whose residual is <= ``tol`` (absolute) or whose Arnoldi process breaks down stops extending its
    basis (its extra columns of H are padded with unit vectors and a zero right-hand side, which
    decouples them and sets those coefficients to 0). ``image``: see :mod:`.batched`
    (Z x = Z x_0 + sum_i y_i Z v_i; None if x = x_0 = 0 without a matvec).
    """
    tol_t = check_system(b, x0, maxiter, tol)
    B = b.shape[0]
    x0_, r0, matvecs, z0 = initial_residual(matvec, b, x0, image)
    z_basis = []
    beta = batch_dot(r0, r0).sqrt()
    broken = ~torch.isfinite(beta)
    finite_x0 = torch.isfinite(batch_dot(x0_, x0_))
    x0_ = torch.where(col(finite_x0, x0_), x0_, torch.zeros_like(x0_))
    if z0 is not None:
        z0 = torch.where(col(finite_x0, z0), z0, torch.zeros_like(z0))
    done = (beta <= tol_t) & ~broken
    stopped = done | broken
    safe_beta = torch.where(stopped, torch.ones_like(beta), beta)
    basis = [torch.where(col(stopped, r0), torch.zeros_like(r0), r0 / col(safe_beta, r0))]
    eps = torch.finfo(b.dtype).eps
    k_max = maxiter
    H = torch.zeros(B, k_max + 1, k_max, dtype=b.dtype, device=b.device)
    res = torch.where(broken, torch.full_like(beta, float("inf")), beta)
    y = torch.zeros(B, 0, dtype=b.dtype, device=b.device)
    rhs_beta = torch.where(torch.isfinite(beta), beta, torch.zeros_like(beta))
    k = 0
    for j in range(k_max):
        active = ~stopped
        if not bool(active.any()):
            break
        w, zw = apply_matvec(matvec, basis[j], image)
        z_basis.append(zw)
        matvecs += 1
        k = j + 1
        w_norm0 = batch_dot(w, w).sqrt()
        for i in range(j + 1):  # modified Gram-Schmidt, per-sample coefficients
            h = batch_dot(w, basis[i])
            H[:, i, j] = torch.where(active, h, torch.zeros_like(h))
            w = w - col(H[:, i, j], w) * basis[i]
        h_next = batch_dot(w, w).sqrt()
        finite = torch.isfinite(h_next) & torch.isfinite(H[:, : j + 1, j]).all(dim=1)
        nonfinite = active & ~finite
        # The whole column is unusable: pad it like a stopped sample (unit vector, no coupling).
        H[:, : j + 2, j] = torch.where(col(nonfinite, H[:, : j + 2, j]), 0.0, H[:, : j + 2, j])
        broken = broken | nonfinite
        tiny = h_next <= 10 * eps * torch.clamp(w_norm0, min=torch.finfo(b.dtype).tiny)
        extend = active & finite & ~tiny
        H[:, j + 1, j] = torch.where(extend, h_next, torch.zeros_like(h_next))
        # Samples stopped before this column get a decoupled unit column e_{j+1}.
        pad = stopped | nonfinite
        H[:, j + 1, j] = torch.where(pad, torch.ones_like(h_next), H[:, j + 1, j])
        safe_h = torch.where(extend, h_next, torch.ones_like(h_next))
        basis.append(torch.where(col(extend, w), w / col(safe_h, w), torch.zeros_like(w)))
        y, res_now = _hessenberg_lstsq(H[:, : k + 1, :k], rhs_beta)
        res = torch.where(active & finite, res_now, res)
        conv = active & finite & (res <= tol_t)
        # Invariant Krylov space: in exact arithmetic the residual is 0 unless M is singular there, so
        # judge it against rounding (sqrt(eps) * beta) rather than the possibly-zero tol.
        lucky_fail = active & finite & tiny & ~conv & (res > eps**0.5 * beta)
        done = done | conv | (active & finite & tiny & ~lucky_fail)
        broken = broken | lucky_fail
        stopped = stopped | conv | broken | (active & tiny)
    x, z = x0_, z0
    if k > 0:
        upd = torch.zeros_like(b)
        for i in range(k):
            upd = upd + col(y[:, i], b) * basis[i]
        ok = torch.isfinite(batch_dot(upd, upd))
        broken = broken | ~ok
        x = torch.where(col(ok, b), x0_ + upd, x0_)
        if image:
            # decoupled columns have y_i = 0; where() keeps a non-finite Z v_i there from leaking
            z_upd = sum(torch.where(col(y[:, i] != 0, z_basis[i]), col(y[:, i], z_basis[i]) * z_basis[i], 0.0)
                        for i in range(k))
            z0 = torch.zeros_like(z_upd) if z0 is None else z0
            z = torch.where(col(ok, z_upd), z0 + z_upd, z0)
    res = torch.where(torch.isfinite(res), res, torch.full_like(res, float("inf")))
    return x, SolveInfo(k, res, int(broken.sum()), matvecs, broken, z)


def _hessenberg_lstsq(H: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample min_y ||beta e_1 - H y|| for H (B, k+1, k) by QR; returns (y (B, k), residual (B,)).

    Rank-deficient H (singular M) is handled by a pseudo-inverse on the triangular factor so the
    output stays finite.
    """
    B, kp1, k = H.shape
    rhs = torch.zeros(B, kp1, dtype=H.dtype, device=H.device)
    rhs[:, 0] = beta
    Q, R = torch.linalg.qr(H, mode="complete")  # Q (B, k+1, k+1), R (B, k+1, k)
    g = torch.einsum("bji,bj->bi", Q, rhs)
    Rk = R[:, :k, :k]
    diag = Rk.diagonal(dim1=1, dim2=2).abs()
    scale = diag.amax(dim=1, keepdim=True).clamp(min=torch.finfo(H.dtype).tiny)
    if bool((diag > 1e3 * torch.finfo(H.dtype).eps * scale).all()):
        y = torch.linalg.solve_triangular(Rk, g[:, :k].unsqueeze(-1), upper=True).squeeze(-1)
    else:
        y = (torch.linalg.pinv(Rk) @ g[:, :k].unsqueeze(-1)).squeeze(-1)
    r = rhs - (H @ y.unsqueeze(-1)).squeeze(-1)
    return y, r.norm(dim=1)
