"""What the batched Krylov solvers (:mod:`.cg`, :mod:`.gmres`) share: SolveInfo, input checks, the matvec call.

Both solve M v = b with one independent system per batch element: ``b`` has shape (B, *shape) and
``matvec`` maps (B, *shape) -> (B, *shape), applying the b-th matrix M_b to the b-th slice. Every
inner product reduces over the non-batch dimensions only, so the step sizes (alpha, beta in CG; the
Hessenberg matrix and least-squares coefficients in GMRES) are per sample: a batch of systems is
solved exactly as if each were solved alone.

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

__all__ = ["MatVec", "SolveInfo", "apply_matvec", "batch_dot", "check_system", "col", "initial_residual"]


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


def col(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against ``like`` (B, *shape)."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def check_system(b: Tensor, x0: Tensor | None, maxiter: int, tol: float | Tensor) -> Tensor:
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


def apply_matvec(matvec: Callable, v: Tensor, image: bool = False) -> tuple[Tensor, Tensor | None]:
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


def initial_residual(matvec: Callable, b: Tensor, x0: Tensor | None,
                      image: bool = False) -> tuple[Tensor, Tensor, int, Tensor | None]:
    """(x_0, r_0 = b - M x_0, matvecs used, Z x_0): x_0 = 0 costs no matvec; Z x_0 is then None (zero,
    of a shape only the first matvec reveals)."""
    if x0 is None:
        return torch.zeros_like(b), b.clone(), 0, None
    x = x0.clone()
    Mx, Zx = apply_matvec(matvec, x, image)
    return x, b - Mx, 1, Zx
