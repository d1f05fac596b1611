"""PiGDM, pseudoinverse-guided diffusion (Song et al. 2023): MMPS with an isotropic V.

V = r_t^2 I with r_t^2 = sigma^2/(1 + sigma^2), solved to convergence. This is mmps with
covariance "inv" (same formula): r_t^2 is the variance of x | x_t for x ~ N(0, I) in the VE
parametrisation (their r_t^2 = sigma_t^2/(1+sigma_t^2) with data scaled to unit variance).
"""

from __future__ import annotations

from dataclasses import dataclass

from emprior.core.registry import option
from emprior.posterior.base import MAXITER_DOC, POSTERIOR_SAMPLERS, SOLVER_DOC, TOL_DOC, default_rtol
from emprior.posterior.mmps import MMPS, MMPSOptions, Solver

__all__ = ["PiGDM", "PiGDMOptions"]


@dataclass(frozen=True)
class PiGDMOptions:
    solver: Solver = option("cg", doc=SOLVER_DOC)
    maxiter: int = option(1000, minimum=1, doc=MAXITER_DOC)
    tol: float = option(0.0, minimum=0, doc=TOL_DOC)
    rtol: float | None = option(None, minimum=0, doc="relative residual tolerance; None: 1e-2 sqrt(eps) of the dtype")


@POSTERIOR_SAMPLERS.register("pigdm", PiGDMOptions)
class PiGDM(MMPS):
    """Pseudoinverse-guided diffusion (Song et al. 2023): MMPS with V = r_t^2 I,
    r_t^2 = sigma^2 / (1 + sigma^2) (= covariance "inv"), the system solved to convergence by CG
    (``maxiter`` default 1000, ``rtol`` default 1e-2 sqrt(eps) of the dtype). One VJP per call.
    """

    exact_on_gaussian = None  # V = r_t^2 I is exact for N(0, I) only

    runtime_args = ()

    def __init__(self, denoiser, op, y, options: PiGDMOptions | None = None):
        options = PiGDMOptions() if options is None else options
        rtol = options.rtol
        mmps = MMPSOptions(covariance="inv", solver=options.solver, maxiter=options.maxiter, tol=options.tol,
                           rtol=0.0 if rtol is None else rtol)
        super().__init__(denoiser, op, y, mmps)
        self.options = options
        self._auto_rtol = rtol is None

    def _estimate(self, x_t, sigma, y):
        if self._auto_rtol:
            self.rtol = default_rtol(x_t.dtype)
        return super()._estimate(x_t, sigma, y)
