"""Batched Krylov solvers for M v = b with one independent system per batch element.

``b`` has shape (B, *shape) and ``matvec`` maps (B, *shape) -> (B, *shape), applying the b-th
matrix M_b to the b-th slice. Every inner product reduces over the non-batch dimensions only, so the
step sizes (alpha, beta in CG; the Hessenberg matrix and least-squares coefficients in GMRES) are
per sample: a batch of systems is solved exactly as if each were solved alone.

The matvec is always called on the *whole* batch (in MMPS it is a vector-Jacobian product through
one batched graph, so it cannot be restricted to a subset). Samples that have converged or broken
down are frozen with ``torch.where`` (never by multiplying with 0, which would turn a NaN into NaN)
and their search direction is zeroed.

A *breakdown* is a sample whose iteration cannot proceed and has not converged:
CG: p^T M p <= 0 or a non-finite alpha/beta (M not SPD along p, e.g. a non-symmetric or indefinite
Jacobian; Section 4.2 notes this happens with trained denoisers); GMRES: a non-finite Arnoldi
vector, or an Arnoldi breakdown (h_{j+1,j} ~ 0) whose least-squares residual is still above
max(tol, sqrt(eps) ||r_0||) (singular M). A *lucky* Arnoldi breakdown (invariant Krylov space,
residual at rounding level) is convergence, not a breakdown. Broken samples keep their last finite
iterate, so no NaN is ever returned.

``image=True``: the matvec returns a pair (M u, Z u) for some linear map Z (in MMPS, M = Sigma_y + A Z
with Z = V A^T), and the solver also returns Z x in ``SolveInfo.image``, accumulated from the Z u of
the vectors it multiplied, with the same coefficients and masks as x. No extra matvec: for
MMPS with the tweedie covariance this saves the VJP of Algorithm 3's last step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]

__all__ = ["SolveInfo", "batch_dot", "cg", "gmres"]


@dataclass
class SolveInfo:
    """Outcome of a batched solve.

    iterations:    loop iterations performed (one matvec each; the same for the whole batch since
                   the matvec is batched).
    residual_norm: (B,) ||b - M x|| per sample (the recursive residual for CG, the least-squares
                   residual for GMRES; both equal the true residual in exact arithmetic).
    breakdowns:    number of samples that broke down (see the module docstring).
    matvecs:       total matvec calls, including the one for r_0 = b - M x_0 when x0 is given.
    broken:        (B,) bool mask of the samples that broke down.
    image:         Z x when the solver was called with ``image=True`` (see the module docstring).
    """

    iterations: int
    residual_norm: Tensor
    breakdowns: int
    matvecs: int = 0
    broken: Tensor | None = None
    image: Tensor | None = None


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product sum over all non-batch dims: (B, *shape) x (B, *shape) -> (B,)."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _col(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against ``like`` (B, *shape)."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _check(b: Tensor, x0: Tensor | None, maxiter: int, tol: float | Tensor) -> Tensor:
    if b.dim() < 1 or b.shape[0] == 0:
        raise ValueError(f"b: expected shape (B, *shape) with B > 0, got {tuple(b.shape)}")
    if not b.is_floating_point():
        raise ValueError(f"b: expected a floating-point tensor, got dtype {b.dtype}")
    if x0 is not None and x0.shape != b.shape:
        raise ValueError(f"x0: expected shape {tuple(b.shape)} (as b), got {tuple(x0.shape)}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter: must be a non-negative integer, got {maxiter!r}")
    tol_t = torch.as_tensor(tol, dtype=b.dtype, device=b.device)
    if tol_t.dim() == 0:
        tol_t = tol_t.expand(b.shape[0])
    if tol_t.shape != (b.shape[0],) or not bool(torch.isfinite(tol_t).all()) or bool((tol_t < 0).any()):
        raise ValueError(f"tol: expected a finite scalar or ({b.shape[0]},) tensor >= 0, got {tol!r}")
    return tol_t


def _apply(matvec: Callable, v: Tensor, image: bool = False) -> tuple[Tensor, Tensor | None]:
    """(M v, Z v) when ``image`` (matvec returns the pair), else (M v, None)."""
    out = matvec(v)
    z = None
    if image:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("matvec: with image=True it must return a pair (M v, Z v)")
        out, z = out
    if out.shape != v.shape:
        raise ValueError(f"matvec: returned shape {tuple(out.shape)} for input shape {tuple(v.shape)}")
    return out, z


def _initial_residual(matvec: Callable, b: Tensor, x0: Tensor | None,
                      image: bool = False) -> tuple[Tensor, Tensor, int, Tensor | None]:
    """(x_0, r_0 = b - M x_0, matvecs used, Z x_0): x_0 = 0 costs no matvec; Z x_0 is then None (zero,
    of a shape only the first matvec reveals)."""
    if x0 is None:
        return torch.zeros_like(b), b.clone(), 0, None
    x = x0.clone()
    Mx, Zx = _apply(matvec, x, image)
    return x, b - Mx, 1, Zx


def cg(
    matvec: MatVec,
    b: Tensor,
    x0: Tensor | None = None,
    maxiter: int = 1,
    tol: float | Tensor = 0.0,
    image: bool = False,
) -> tuple[Tensor, SolveInfo]:
    """Conjugate gradient, Algorithm 4, batched with per-sample coefficients::

        r_0 = b - M x_0,  p_0 = r_0
        for i = 0 .. maxiter-1:   (per sample, stops once ||r_i|| <= tol)
            alpha_i = r_i^T r_i / p_i^T M p_i
            x_{i+1} = x_i + alpha_i p_i
            r_{i+1} = r_i - alpha_i M p_i
            beta_i  = r_{i+1}^T r_{i+1} / r_i^T r_i
            p_{i+1} = r_{i+1} + beta_i p_i

    For SPD M_b of size n, CG reaches the exact solution in at most n iterations (exact
    arithmetic). With x0 = None (x_0 = 0) and maxiter = 1 the result is the closed form
    x = (r^T r / r^T M r) r with r = b. ``tol`` is absolute on ||r_i|| (a float or a (B,) tensor,
    e.g. rtol * ||b|| for a relative criterion). ``image``: see the module docstring (z = Z x is
    updated as z + alpha Z p wherever x is; None if x = x_0 = 0 without a matvec).
    """
    tol_t = _check(b, x0, maxiter, tol)
    x, r, matvecs, z = _initial_residual(matvec, b, x0, image)
    p = r.clone()
    rr = batch_dot(r, r)
    broken = ~torch.isfinite(rr)
    # A non-finite initial residual (from x0) is a breakdown; x stays x0 (zeroed if non-finite).
    finite_x0 = torch.isfinite(batch_dot(x, x))
    x = torch.where(_col(finite_x0, x), x, torch.zeros_like(x))
    if z is not None:
        z = torch.where(_col(finite_x0, z), z, torch.zeros_like(z))
    # Residuals at rounding level count as converged: iterating on them gives p^T M p ~ 0 and a
    # spurious "breakdown" (e.g. a diagonal system solved exactly in one step).
    tol_t = torch.maximum(tol_t, 10 * torch.finfo(b.dtype).eps * rr.sqrt().nan_to_num(0.0))
    done = rr.sqrt() <= tol_t
    iterations = 0
    for _ in range(maxiter):
        active = ~(done | broken)
        if not bool(active.any()):
            break
        p = torch.where(_col(active, p), p, torch.zeros_like(p))
        Mp, Zp = _apply(matvec, p, image)
        matvecs += 1
        iterations += 1
        pMp = batch_dot(p, Mp)
        alpha = rr / torch.where(active, pMp, torch.ones_like(pMp))
        bad = active & ~((pMp > 0) & torch.isfinite(alpha))
        r_new = r - _col(alpha, r) * Mp
        rr_new = batch_dot(r_new, r_new)
        x_new = x + _col(alpha, x) * p
        bad = bad | (active & ~(torch.isfinite(rr_new) & torch.isfinite(batch_dot(x_new, x_new))))
        broken = broken | bad
        step = active & ~bad
        c = _col(step, x)
        x = torch.where(c, x_new, x)
        if image:
            z = torch.zeros_like(Zp) if z is None else z
            z = torch.where(_col(step, Zp), z + _col(alpha, Zp) * Zp, z)
        r = torch.where(c, r_new, r)
        beta = rr_new / torch.where(step, rr, torch.ones_like(rr))
        p = torch.where(c, r_new + _col(beta, p) * p, p)
        rr = torch.where(step, rr_new, rr)
        done = done | (step & (rr.sqrt() <= tol_t))
    res = torch.where(torch.isfinite(rr), rr, torch.full_like(rr, float("inf"))).sqrt()
    return x, SolveInfo(iterations, res, int(broken.sum()), matvecs, broken, z)


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
    decouples them and sets those coefficients to 0). ``image``: see the module docstring
    (Z x = Z x_0 + sum_i y_i Z v_i; None if x = x_0 = 0 without a matvec).
    """
    tol_t = _check(b, x0, maxiter, tol)
    B = b.shape[0]
    x0_, r0, matvecs, z0 = _initial_residual(matvec, b, x0, image)
    z_basis = []
    beta = batch_dot(r0, r0).sqrt()
    broken = ~torch.isfinite(beta)
    finite_x0 = torch.isfinite(batch_dot(x0_, x0_))
    x0_ = torch.where(_col(finite_x0, x0_), x0_, torch.zeros_like(x0_))
    if z0 is not None:
        z0 = torch.where(_col(finite_x0, z0), z0, torch.zeros_like(z0))
    done = (beta <= tol_t) & ~broken
    stopped = done | broken
    safe_beta = torch.where(stopped, torch.ones_like(beta), beta)
    basis = [torch.where(_col(stopped, r0), torch.zeros_like(r0), r0 / _col(safe_beta, r0))]
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
        w, zw = _apply(matvec, basis[j], image)
        z_basis.append(zw)
        matvecs += 1
        k = j + 1
        w_norm0 = batch_dot(w, w).sqrt()
        for i in range(j + 1):  # modified Gram-Schmidt, per-sample coefficients
            h = batch_dot(w, basis[i])
            H[:, i, j] = torch.where(active, h, torch.zeros_like(h))
            w = w - _col(H[:, i, j], w) * basis[i]
        h_next = batch_dot(w, w).sqrt()
        finite = torch.isfinite(h_next) & torch.isfinite(H[:, : j + 1, j]).all(dim=1)
        nonfinite = active & ~finite
        # The whole column is unusable: pad it like a stopped sample (unit vector, no coupling).
        H[:, : j + 2, j] = torch.where(_col(nonfinite, H[:, : j + 2, j]), 0.0, H[:, : j + 2, j])
        broken = broken | nonfinite
        tiny = h_next <= 10 * eps * torch.clamp(w_norm0, min=torch.finfo(b.dtype).tiny)
        extend = active & finite & ~tiny
        H[:, j + 1, j] = torch.where(extend, h_next, torch.zeros_like(h_next))
        # Samples stopped before this column get a decoupled unit column e_{j+1}.
        pad = stopped | nonfinite
        H[:, j + 1, j] = torch.where(pad, torch.ones_like(h_next), H[:, j + 1, j])
        safe_h = torch.where(extend, h_next, torch.ones_like(h_next))
        basis.append(torch.where(_col(extend, w), w / _col(safe_h, w), torch.zeros_like(w)))
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
            upd = upd + _col(y[:, i], b) * basis[i]
        ok = torch.isfinite(batch_dot(upd, upd))
        broken = broken | ~ok
        x = torch.where(_col(ok, b), x0_ + upd, x0_)
        if image:
            # decoupled columns have y_i = 0; where() keeps a non-finite Z v_i there from leaking
            z_upd = sum(torch.where(_col(y[:, i] != 0, z_basis[i]), _col(y[:, i], z_basis[i]) * z_basis[i], 0.0)
                        for i in range(k))
            z0 = torch.zeros_like(z_upd) if z0 is None else z0
            z = torch.where(_col(ok, z_upd), z0 + z_upd, z0)
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
