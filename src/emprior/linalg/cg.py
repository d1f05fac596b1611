"""Batched conjugate gradient (Algorithm 4) for SPD systems, one per batch element (see :mod:`.batched`)."""

from __future__ import annotations

import torch
from torch import Tensor

from emprior.linalg.batched import MatVec, SolveInfo, apply_matvec, batch_dot, check_system, col, initial_residual

__all__ = ["cg"]


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
    e.g. rtol * ||b|| for a relative criterion). ``image``: see :mod:`.batched` (z = Z x is
    updated as z + alpha Z p wherever x is; None if x = x_0 = 0 without a matvec).
    """
    tol_t = check_system(b, x0, maxiter, tol)
    x, r, matvecs, z = initial_residual(matvec, b, x0, image)
    p = r.clone()
    rr = batch_dot(r, r)
    broken = ~torch.isfinite(rr)
    # A non-finite initial residual (from x0) is a breakdown; x stays x0 (zeroed if non-finite).
    finite_x0 = torch.isfinite(batch_dot(x, x))
    x = torch.where(col(finite_x0, x), x, torch.zeros_like(x))
    if z is not None:
        z = torch.where(col(finite_x0, z), z, torch.zeros_like(z))
    # Residuals at rounding level count as converged: iterating on them gives p^T M p ~ 0 and a
    # spurious "breakdown" (e.g. a diagonal system solved exactly in one step).
    tol_t = torch.maximum(tol_t, 10 * torch.finfo(b.dtype).eps * rr.sqrt().nan_to_num(0.0))
    done = rr.sqrt() <= tol_t
    iterations = 0
    for _ in range(maxiter):
        active = ~(done | broken)
        if not bool(active.any()):
            break
        p = torch.where(col(active, p), p, torch.zeros_like(p))
        Mp, Zp = apply_matvec(matvec, p, image)
        matvecs += 1
        iterations += 1
        pMp = batch_dot(p, Mp)
        alpha = rr / torch.where(active, pMp, torch.ones_like(pMp))
        bad = active & ~((pMp > 0) & torch.isfinite(alpha))
        r_new = r - col(alpha, r) * Mp
        rr_new = batch_dot(r_new, r_new)
        x_new = x + col(alpha, x) * p
        bad = bad | (active & ~(torch.isfinite(rr_new) & torch.isfinite(batch_dot(x_new, x_new))))
        broken = broken | bad
        step = active & ~bad
        c = col(step, x)
        x = torch.where(c, x_new, x)
        if image:
            z = torch.zeros_like(Zp) if z is None else z
            z = torch.where(col(step, Zp), z + col(alpha, Zp) * Zp, z)
        r = torch.where(c, r_new, r)
        beta = rr_new / torch.where(step, rr, torch.ones_like(rr))
        p = torch.where(c, r_new + col(beta, p) * p, p)
        rr = torch.where(step, rr_new, rr)
        done = done | (step & (rr.sqrt() <= tol_t))
    res = torch.where(torch.isfinite(rr), rr, torch.full_like(rr, float("inf"))).sqrt()
    return x, SolveInfo(iterations, res, int(broken.sum()), matvecs, broken, z)
