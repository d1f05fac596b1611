"""MMPS, moment matching posterior sampling (Algorithm 3, Eqs. (19)-(23)).

The Gaussian moment projection q(x | x_t) = N(x_hat, V)
(Eq. (17)) gives q(y | x_t) = N(A x_hat, Sigma_y + A V A^T) (Eq. (18)) and

    v = (Sigma_y + A V A^T)^-1 (y - A x_hat)        (Eq. (22), CG or GMRES)
    E[x | x_t, y] ~ x_hat + sigma^2 J^T A^T v        (Eq. (19)),  J = d x_hat / d x_t.

``covariance`` chooses V: "tweedie" V = sigma^2 J (Eq. (21); J v by one VJP per solver
iteration, J assumed symmetric as in the official code, Eq. (23); the last step's
sigma^2 J^T A^T v = V A^T v is a linear combination of the solver's V A^T p, so it needs
no VJP of its own: maxiter VJPs per call, the official code spends maxiter + 1);
heuristics "sigma_t" V = sigma^2 I, "inv" V = (I + Sigma_t^-1)^-1 = sigma^2/(1+sigma^2) I, "prior"
V = (Sigma_x^-1 + Sigma_t^-1)^-1 for a Gaussian Sigma_x (argument ``prior``); "exact"
V = denoiser.cov_matvec (analytic denoisers, for tests). For a Gaussian prior and
"tweedie"/"exact" with a converged solve the result *is* E[x | x_t, y].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from emprior.core.registry import option
from emprior.linalg import batch_dot, cg, gmres
from emprior.posterior.base import (
    MAXITER_DOC,
    POSTERIOR_SAMPLERS,
    SOLVER_DOC,
    TOL_DOC,
    Denoiser,
    PosteriorDenoiser,
    col,
    nonneg_float,
    positive_int,
)
from emprior.priors.gaussian import LowRankGaussian

__all__ = ["COVARIANCES", "MMPS", "SOLVERS", "MMPSOptions"]

Covariance = Literal["tweedie", "sigma_t", "inv", "prior", "exact"]
Solver = Literal["cg", "gmres"]
COVARIANCES: tuple[str, ...] = get_args(Covariance)
SOLVERS = {"cg": cg, "gmres": gmres}
assert tuple(SOLVERS) == get_args(Solver)


@dataclass(frozen=True)
class MMPSOptions:
    covariance: Covariance = option("tweedie", doc="V[x | x_t]: tweedie (sigma^2 J, Eq. (21)) or a heuristic")
    solver: Solver = option("cg", doc=SOLVER_DOC)
    maxiter: int = option(1, minimum=1, doc=MAXITER_DOC)
    tol: float = option(0.0, minimum=0, doc=TOL_DOC)
    rtol: float = option(0.0, minimum=0, doc="residual tolerance relative to ||y - A x_hat||")


@POSTERIOR_SAMPLERS.register("mmps", MMPSOptions)
class MMPS(PosteriorDenoiser):
    """Moment matching posterior sampling, Algorithm 3 (see the module docstring).

    Options (:class:`MMPSOptions`): ``covariance`` in COVARIANCES (default "tweedie"), ``solver`` "cg"
    (Algorithm 4) or "gmres", ``maxiter`` (default 1, the paper's CIFAR setting), ``tol`` (absolute
    residual) and ``rtol`` (relative to ||y - A x_hat||); runtime argument ``prior`` (LowRankGaussian,
    for covariance "prior").
    VJPs per call: maxiter for "tweedie" (fewer if every sample converges early; the last step's
    sigma^2 J^T A^T v is accumulated by the solver from its own VJPs), 1 otherwise.
    """

    runtime_args = ("prior",)
    # With the exact denoiser of a Gaussian prior, Tweedie's covariance (Eq. 21) is V[x | x_t] exactly;
    # CG to convergence then gives E[x | x_t, y] exactly (tests/contract).
    exact_on_gaussian = {"covariance": "tweedie", "solver": "cg", "maxiter": 64}

    def __init__(
        self,
        denoiser: Denoiser,
        op: Any,
        y: Tensor,
        options: MMPSOptions | None = None,
        prior: LowRankGaussian | None = None,
    ):
        options = MMPSOptions() if options is None else options
        super().__init__(denoiser, op, y, options)
        covariance, solver = options.covariance, options.solver
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance: must be one of {COVARIANCES}, got {covariance!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver: must be one of {tuple(SOLVERS)}, got {solver!r}")
        if covariance == "prior" and not isinstance(prior, LowRankGaussian):
            raise ValueError(f"prior: covariance 'prior' needs a LowRankGaussian, got {type(prior).__name__}")
        if covariance == "exact" and not callable(getattr(denoiser, "cov_matvec", None)):
            raise ValueError(
                f"covariance: 'exact' needs denoiser.cov_matvec, {type(denoiser).__name__} has none"
            )
        self.covariance = covariance
        self.solver = solver
        self.maxiter = positive_int("maxiter", options.maxiter)
        self.tol = nonneg_float("tol", options.tol)
        self.rtol = nonneg_float("rtol", options.rtol)
        self.prior = prior

    def _cov_matvec(
        self, x_t: Tensor, sigma: Tensor, vjp: Callable[[Tensor], Tensor]
    ) -> Callable[[Tensor], Tensor]:
        """u -> V u for the chosen V[x | x_t] (Algorithm 3, lines 3-6)."""
        s2 = col(sigma**2, x_t)
        if self.covariance == "tweedie":
            return lambda u: s2 * vjp(u)  # Eq. (21), J^T = J assumed (Eq. (23))
        if self.covariance == "sigma_t":
            return lambda u: s2 * u
        if self.covariance == "inv":
            return lambda u: s2 / (1 + s2) * u
        if self.covariance == "prior":
            prior = self.prior
            return lambda u: prior.cov_inv_plus_matvec(u, sigma)
        return lambda u: self.denoiser.cov_matvec(x_t, sigma, u)

    def _estimate(self, x_t: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
        x_hat, vjp = self._linearize(x_t, sigma)
        x_hat_d = x_hat.detach()
        b = y - self.op.A(x_hat_d)  # Algorithm 3, line 7
        var_y = self.noise_std**2
        cov = self._cov_matvec(x_t, sigma, vjp)
        A, At = self.op.A, self.op.At

        # With V = sigma^2 J the last step's sigma^2 J^T A^T v is V A^T v: the solver accumulates it from
        # the V A^T p of its own matvecs (linalg, image=True), which saves that step's VJP.
        reuse = self.covariance == "tweedie"

        def matvec(v: Tensor) -> Tensor | tuple[Tensor, Tensor]:  # (Sigma_y + A V A^T) v, Eq. (22)-(23)
            VAtv = cov(At(v))
            Mv = var_y * v + A(VAtv)
            return (Mv, VAtv) if reuse else Mv

        # a non-finite b (NaN from the denoiser) must reach the sampler's guard, not crash the solver
        tol = torch.clamp(self.rtol * batch_dot(b, b).sqrt(), min=self.tol).nan_to_num(self.tol, self.tol)
        v, info = SOLVERS[self.solver](matvec, b, maxiter=self.maxiter, tol=tol, image=reuse)
        self._record_solve(info, b)
        if reuse and info.image is not None:
            guidance = info.image
        else:
            guidance = col(sigma**2, x_t) * vjp(At(v))
        out = x_hat_d + guidance  # x_t + Sigma_t (s_x + s_{y|x}), line 9-11
        return self._finalize(out, x_hat_d)
