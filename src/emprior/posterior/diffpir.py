"""DiffPIR's proximal data-consistency step (Zhu et al. 2023).

The proximal data step

    x_0 = argmin_x ||y - A x||^2 + rho_t ||x - x_hat||^2,   rho_t = lam noise_std^2 / sigma^2

(equivalently ||y - A x||^2 / (2 noise_std^2) + lam / (2 sigma^2) ||x - x_hat||^2, the MAP
under x ~ N(x_hat, sigma^2/lam I)); their sigma_bar_t = sqrt(1 - abar_t)/sqrt(abar_t) is the VE
sigma here. Solved by CG on (A^T A + rho_t I) delta = A^T (y - A x_hat), x_0 = x_hat + delta.
No VJP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from emprior.core.registry import option
from emprior.linalg import batch_dot, cg
from emprior.posterior.base import (
    MAXITER_DOC,
    POSTERIOR_SAMPLERS,
    PosteriorDenoiser,
    col,
    default_rtol,
    nonneg_float,
    positive_int,
)

__all__ = ["DiffPIR", "DiffPIROptions"]


@dataclass(frozen=True)
class DiffPIROptions:
    lam: float = option(1.0, exclusiveMinimum=0, doc="prior weight: rho_t = lam noise_std^2 / sigma^2")
    maxiter: int = option(100, minimum=1, doc=MAXITER_DOC)
    rtol: float | None = option(None, minimum=0, doc="relative residual tolerance; None: 1e-2 sqrt(eps) of the dtype")


@POSTERIOR_SAMPLERS.register("diffpir", DiffPIROptions)
class DiffPIR(PosteriorDenoiser):
    """DiffPIR data-consistency step (Zhu et al. 2023), see the module docstring::

        (A^T A + rho_t I) delta = A^T (y - A x_hat),   rho_t = lam noise_std^2 / sigma^2,
        x_0 = x_hat + delta

    solved by CG (``maxiter`` default 100, ``rtol`` default 1e-2 sqrt(eps)); no VJP. Options ``lam``
    (default 1.0), ``maxiter``, ``rtol``. With noise_std = 0 (rho = 0) CG from delta = 0 stays in the
    range of A^T and returns the minimum-norm correction (hard data consistency).
    """

    def __init__(self, denoiser, op, y, options: DiffPIROptions | None = None):
        options = DiffPIROptions() if options is None else options
        super().__init__(denoiser, op, y, options)
        self.lam = nonneg_float("lam", options.lam, positive=True)
        self.maxiter = positive_int("maxiter", options.maxiter)
        self.rtol = None if options.rtol is None else nonneg_float("rtol", options.rtol)

    def _estimate(self, x_t, sigma, y):
        with torch.no_grad():
            x_hat = self.denoiser(x_t, sigma)
        if not isinstance(x_hat, Tensor) or x_hat.shape != x_t.shape:
            raise ValueError(
                f"denoiser: returned shape {tuple(getattr(x_hat, 'shape', ()))}, expected {tuple(x_t.shape)}"
            )
        x_hat = x_hat.detach()
        rho = col(self.lam * self.noise_std**2 / sigma**2, x_t)
        A, At = self.op.A, self.op.At
        rhs = At(y - A(x_hat))
        rtol = default_rtol(x_t.dtype) if self.rtol is None else self.rtol
        delta, info = cg(
            lambda v: At(A(v)) + rho * v,
            rhs,
            maxiter=self.maxiter,
            tol=(rtol * batch_dot(rhs, rhs).sqrt()).nan_to_num(0.0, 0.0),
        )
        self._record_solve(info, rhs)
        return self._finalize(x_hat + delta, x_hat)
