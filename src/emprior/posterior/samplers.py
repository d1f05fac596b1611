"""Posterior denoisers: estimates of E[x | x_t, y] for y = A x + e, e ~ N(0, noise_std^2 I).

Every method here is a callable ``post(x_t, sigma) -> E[x | x_t, y]`` with the denoiser interface, so
the samplers of :mod:`emprior.diffusion.core` sample the posterior exactly as they sample the prior. By
Tweedie (Eq. (24)) a posterior denoiser is equivalent to a posterior score:

    E[x | x_t, y] = x_t + sigma^2 (grad log p(x_t) + grad log p(y | x_t))
                  = x_hat + sigma^2 grad_{x_t} log p(y | x_t),          x_hat = d(x_t, sigma),

which is what Algorithm 3 returns (s_x + s_{y|x}, times Sigma_t = sigma^2 I, plus x_t). The methods
differ in their estimate of the likelihood score:

``mmps``   (Algorithm 3, Eqs. (19)-(23)) the Gaussian moment projection q(x | x_t) = N(x_hat, V)
           (Eq. (17)) gives q(y | x_t) = N(A x_hat, Sigma_y + A V A^T) (Eq. (18)) and

               v = (Sigma_y + A V A^T)^-1 (y - A x_hat)        (Eq. (22), CG or GMRES)
               E[x | x_t, y] ~ x_hat + sigma^2 J^T A^T v        (Eq. (19)),  J = d x_hat / d x_t.

           ``covariance`` chooses V: "tweedie" V = sigma^2 J (Eq. (21); J v by one VJP per solver
           iteration, J assumed symmetric as in the official code, Eq. (23); the last step's
           sigma^2 J^T A^T v = V A^T v is a linear combination of the solver's V A^T p, so it needs
           no VJP of its own: maxiter VJPs per call, the official code spends maxiter + 1);
           heuristics "sigma_t" V = sigma^2 I, "inv" V = (I + Sigma_t^-1)^-1 = sigma^2/(1+sigma^2) I, "prior"
           V = (Sigma_x^-1 + Sigma_t^-1)^-1 for a Gaussian Sigma_x (option ``prior``); "exact"
           V = denoiser.cov_matvec (analytic denoisers, for tests). For a Gaussian prior and
           "tweedie"/"exact" with a converged solve the result *is* E[x | x_t, y].
``dps``    Chung et al. 2023: grad log p(y | x_t) ~ -zeta grad_{x_t} ||y - A x_hat||_2 (one VJP).
``pigdm``  Song et al. 2023 (PiGDM): V = r_t^2 I with r_t^2 = sigma^2/(1 + sigma^2), solved to
           convergence. This is mmps with covariance "inv" (same formula): r_t^2 is the variance of
           x | x_t for x ~ N(0, I) in the VE parametrisation (their r_t^2 = sigma_t^2/(1+sigma_t^2)
           with data scaled to unit variance).
``tmpd``   Boys et al. 2023: A V A^T (V = sigma^2 J) replaced by diag(A V A^T 1), its row sums
           (one VJP), so the system is diagonal; then x_hat + sigma^2 J^T A^T v (second VJP). Exact
           when A V A^T is diagonal (e.g. A and Sigma diagonal), their stated validity case.
``diffpir`` Zhu et al. 2023: the proximal data step
               x_0 = argmin_x ||y - A x||^2 + rho_t ||x - x_hat||^2,   rho_t = lam noise_std^2 / sigma^2
           (equivalently ||y - A x||^2 / (2 noise_std^2) + lam / (2 sigma^2) ||x - x_hat||^2, the MAP
           under x ~ N(x_hat, sigma^2/lam I)); their sigma_bar_t = sqrt(1 - abar_t)/sqrt(abar_t) is the VE
           sigma here. Solved by CG on (A^T A + rho_t I) delta = A^T (y - A x_hat), x_0 = x_hat + delta.
           No VJP.

VJPs: the denoiser's graph is built once per call (x_t.requires_grad_ under torch.enable_grad, so
it works inside the samplers' torch.no_grad) and every J^T u is torch.autograd.grad(..., retain_graph
=True). Returned tensors are detached.

Statistics (``.stats``, accumulated over calls; ``summary()`` gives per-call means): calls, vjps,
vjps_per_call (last call), solves, solver_iterations, residual_norm_sum / relative_residual_sum (final
||b - M v|| and ||b - M v|| / ||b||, averaged over the batch, summed over solves), breakdowns
(samples), fallbacks (samples).

NaN safety: a solver breakdown (p^T M p <= 0, e.g. a non-SPD Jacobian; a non-finite matvec) freezes
that sample at its last finite iterate (:mod:`emprior.linalg.krylov`), which is a shorter truncated solve, and
is counted in ``breakdowns``. If the final estimate of a sample is still non-finite it falls back to
x_hat (the unconditional denoiser, i.e. no guidance at this step) and is counted in ``fallbacks``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from emprior.diffusion.core import batch_sigma
from emprior.priors.gaussian import LowRankGaussian
from emprior.linalg.krylov import SolveInfo, batch_dot, cg, gmres

__all__ = [
    "COVARIANCES",
    "DPS",
    "METHODS",
    "MMPS",
    "SOLVERS",
    "TMPD",
    "DiffPIR",
    "PiGDM",
    "PosteriorDenoiser",
    "make_posterior",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]
COVARIANCES = ("tweedie", "sigma_t", "inv", "prior", "exact")
SOLVERS = {"cg": cg, "gmres": gmres}


def _col(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcasting against ``like``."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _default_rtol(dtype: torch.dtype) -> float:
    """A relative residual reachable by CG in ``dtype`` (1.5e-10 in float64, 3.5e-6 in float32)."""
    return 1e-2 * math.sqrt(torch.finfo(dtype).eps)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def _nonneg_float(name: str, value: Any, positive: bool = False) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number, got {value!r}") from None
    if not math.isfinite(f) or f < 0 or (positive and f == 0):
        raise ValueError(f"{name}: must be finite and {'> 0' if positive else '>= 0'}, got {value!r}")
    return f


class PosteriorDenoiser:
    """Base class: ``__call__(x_t, sigma)`` -> detached estimate of E[x | x_t, y], shape of x_t.

    ``denoiser`` is the prior denoiser d(x_t, sigma) ~ E[x | x_t]; ``op`` any object with ``A``,
    ``At`` and ``noise_std`` (Sigma_y = noise_std^2 I); ``y`` (B, *y_shape) holds one observation
    per sample of x_t (a batch of 1 is broadcast).
    """

    name = "base"

    def __init__(self, denoiser: Denoiser, op: Any, y: Tensor):
        if not callable(denoiser):
            raise TypeError(f"denoiser: expected a callable d(x_t, sigma), got {type(denoiser).__name__}")
        for attr in ("A", "At", "noise_std"):
            if not hasattr(op, attr):
                raise TypeError(f"op: {type(op).__name__} has no attribute {attr!r} (need A, At, noise_std)")
        if not isinstance(y, Tensor) or y.dim() < 2 or y.shape[0] == 0:
            raise ValueError(f"y: expected a tensor of shape (B, *y_shape), got {getattr(y, 'shape', y)!r}")
        self.denoiser = denoiser
        self.op = op
        self.y = y.detach()
        self.noise_std = _nonneg_float("op.noise_std", op.noise_std)
        self.stats: dict[str, float | int] = {}
        self.reset_stats()

    # -- statistics -----------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.stats = {
            "calls": 0,
            "vjps": 0,
            "vjps_per_call": 0,
            "solves": 0,
            "solver_iterations": 0,
            "residual_norm_sum": 0.0,
            "relative_residual_sum": 0.0,
            "breakdowns": 0,
            "fallbacks": 0,
        }

    def summary(self) -> dict[str, float]:
        """Per-call means: vjps, solver iterations, residual norms; totals of breakdowns/fallbacks."""
        s = self.stats
        calls, solves = max(int(s["calls"]), 1), max(int(s["solves"]), 1)
        return {
            "calls": float(s["calls"]),
            "vjps_per_call": s["vjps"] / calls,
            "solver_iterations_per_solve": s["solver_iterations"] / solves,
            "residual_norm": s["residual_norm_sum"] / solves,
            "relative_residual": s["relative_residual_sum"] / solves,
            "breakdowns": float(s["breakdowns"]),
            "fallbacks": float(s["fallbacks"]),
        }

    def _record_solve(self, info: SolveInfo, b: Tensor) -> None:
        bn = batch_dot(b, b).sqrt()
        rel = info.residual_norm / torch.where(bn > 0, bn, torch.ones_like(bn))
        fin = torch.isfinite(info.residual_norm)
        self.stats["solves"] += 1
        self.stats["solver_iterations"] += info.iterations
        self.stats["residual_norm_sum"] += float(info.residual_norm[fin].mean()) if bool(fin.any()) else 0.0
        self.stats["relative_residual_sum"] += float(rel[fin].mean()) if bool(fin.any()) else 0.0
        self.stats["breakdowns"] += info.breakdowns

    # -- helpers for subclasses -----------------------------------------------------------------
    def _observation(self, x_t: Tensor) -> Tensor:
        y = self.y.to(dtype=x_t.dtype, device=x_t.device)
        if y.shape[0] == x_t.shape[0]:
            return y
        if y.shape[0] == 1:
            return y.expand(x_t.shape[0], *y.shape[1:])
        raise ValueError(f"x_t: batch size {x_t.shape[0]} does not match y's {y.shape[0]} observations")

    def _linearize(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """x_hat = d(x_t, sigma) with its graph, and u -> J^T u (one VJP per call, counted)."""
        x = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            x_hat = self.denoiser(x, sigma)
        if not isinstance(x_hat, Tensor) or x_hat.shape != x_t.shape:
            raise ValueError(
                f"denoiser: returned shape {tuple(getattr(x_hat, 'shape', ()))}, expected {tuple(x_t.shape)}"
            )
        if not x_hat.requires_grad:
            raise ValueError(
                "denoiser: output is not differentiable in x_t (detached or torch.inference_mode?)"
            )

        def vjp(u: Tensor) -> Tensor:
            # J^T u as the gradient of the scalar <x_hat, u>: bit for bit the same as grad_outputs=u, but
            # a tensor grad_outputs makes torch.autograd import sympy (~1 s of every E-step job's start-up).
            with torch.enable_grad():
                inner = (x_hat * u.detach()).sum()
            (g,) = torch.autograd.grad(inner, x, retain_graph=True, allow_unused=True)
            self._vjps += 1
            return torch.zeros_like(x_t) if g is None else g.detach()

        return x_hat, vjp

    def _finalize(self, out: Tensor, x_hat: Tensor) -> Tensor:
        """Replace non-finite samples by x_hat (counted as fallbacks)."""
        ok = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
        if not bool(ok.all()):
            self.stats["fallbacks"] += int((~ok).sum())
            out = torch.where(_col(ok, out), out, x_hat)
        return out.detach()

    # -- interface -------------------------------------------------------------------------------
    def __call__(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        if not isinstance(x_t, Tensor) or x_t.dim() < 2 or not x_t.is_floating_point():
            raise ValueError(
                f"x_t: expected a float tensor of shape (B, *x_shape), got {getattr(x_t, 'shape', x_t)!r}"
            )
        sigma = batch_sigma(sigma, x_t)
        if bool((sigma <= 0).any()) or not bool(torch.isfinite(sigma).all()):
            raise ValueError(f"sigma: must be finite and > 0, got min {sigma.min().item()!r}")
        y = self._observation(x_t)
        self._vjps = 0
        out = self._estimate(x_t.detach(), sigma, y)
        self.stats["calls"] += 1
        self.stats["vjps"] += self._vjps
        self.stats["vjps_per_call"] = self._vjps
        return out

    def _estimate(self, x_t: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise_std={self.noise_std:.3g})"


class MMPS(PosteriorDenoiser):
    """Moment matching posterior sampling, Algorithm 3 (see the module docstring).

    Options: ``covariance`` in COVARIANCES (default "tweedie"), ``solver`` "cg" (Algorithm 4) or
    "gmres", ``maxiter`` (default 1, the paper's CIFAR setting), ``tol`` (absolute residual) and
    ``rtol`` (relative to ||y - A x_hat||), ``prior`` (LowRankGaussian, for covariance "prior").
    VJPs per call: maxiter for "tweedie" (fewer if every sample converges early; the last step's
    sigma^2 J^T A^T v is accumulated by the solver from its own VJPs), 1 otherwise.
    """

    name = "mmps"
    OPTIONS = ("covariance", "solver", "maxiter", "tol", "rtol", "prior")

    def __init__(
        self,
        denoiser: Denoiser,
        op: Any,
        y: Tensor,
        covariance: str = "tweedie",
        solver: str = "cg",
        maxiter: int = 1,
        tol: float = 0.0,
        rtol: float = 0.0,
        prior: LowRankGaussian | None = None,
    ):
        super().__init__(denoiser, op, y)
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
        self.maxiter = _positive_int("maxiter", maxiter)
        self.tol = _nonneg_float("tol", tol)
        self.rtol = _nonneg_float("rtol", rtol)
        self.prior = prior

    def _cov_matvec(
        self, x_t: Tensor, sigma: Tensor, vjp: Callable[[Tensor], Tensor]
    ) -> Callable[[Tensor], Tensor]:
        """u -> V u for the chosen V[x | x_t] (Algorithm 3, lines 3-6)."""
        s2 = _col(sigma**2, x_t)
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
            guidance = _col(sigma**2, x_t) * vjp(At(v))
        out = x_hat_d + guidance  # x_t + Sigma_t (s_x + s_{y|x}), line 9-11
        return self._finalize(out, x_hat_d)


class PiGDM(MMPS):
    """Pseudoinverse-guided diffusion (Song et al. 2023): MMPS with V = r_t^2 I,
    r_t^2 = sigma^2 / (1 + sigma^2) (= covariance "inv"), the system solved to convergence by CG
    (``maxiter`` default 1000, ``rtol`` default 1e-2 sqrt(eps) of the dtype). One VJP per call.
    """

    name = "pigdm"
    OPTIONS = ("solver", "maxiter", "tol", "rtol")

    def __init__(
        self,
        denoiser,
        op,
        y,
        solver: str = "cg",
        maxiter: int = 1000,
        tol: float = 0.0,
        rtol: float | None = None,
    ):
        super().__init__(
            denoiser,
            op,
            y,
            covariance="inv",
            solver=solver,
            maxiter=maxiter,
            tol=tol,
            rtol=0.0 if rtol is None else rtol,
        )
        self._auto_rtol = rtol is None

    def _estimate(self, x_t, sigma, y):
        if self._auto_rtol:
            self.rtol = _default_rtol(x_t.dtype)
        return super()._estimate(x_t, sigma, y)


class DPS(PosteriorDenoiser):
    """Diffusion posterior sampling (Chung et al. 2023)::

        E[x | x_t, y] ~ x_hat - sigma^2 zeta grad_{x_t} ||y - A x_hat||_2
                      = x_hat + sigma^2 zeta J^T A^T (y - A x_hat) / ||y - A x_hat||     (one VJP)

    i.e. grad log p(y | x_t) ~ -zeta grad ||y - A x_hat|| (non-squared norm, as in their Alg. 1).
    VE translation of the step size. DPS (VP diffusion) applies x_{i-1} <- x'_{i-1} - zeta_i grad_{x_i}
    ||y - A x_hat|| after each ancestral step. With x^VP = sqrt(abar) x^VE, abar = 1/(1 + sigma^2),
    that is a VE step of about -zeta_i (1 + sigma_t^2) grad_{x^VE} ||.||. Here the guidance enters
    through the denoiser, and the DDPM-style sampler (Algorithm 2) moves x_{t-1} by
    -(1 - sigma_{t-1}^2/sigma_t^2) sigma_t^2 zeta grad = -(sigma_t^2 - sigma_{t-1}^2) zeta grad, so

        zeta = zeta_i (1 + sigma_t^2) / (sigma_t^2 - sigma_{t-1}^2)

    reproduces a DPS step size zeta_i. Their paper writes the squared norm with
    zeta_i = zeta' / ||y - A x_hat|| (i.e. 2 zeta' grad ||.||); their code, like this class,
    differentiates the non-squared norm with a constant scale. Option ``zeta`` (default 1.0).
    Samples with y = A x_hat exactly get no correction.
    """

    name = "dps"
    OPTIONS = ("zeta",)

    def __init__(self, denoiser, op, y, zeta: float = 1.0):
        super().__init__(denoiser, op, y)
        self.zeta = _nonneg_float("zeta", zeta)

    def _estimate(self, x_t, sigma, y):
        x_hat, vjp = self._linearize(x_t, sigma)
        x_hat_d = x_hat.detach()
        r = y - self.op.A(x_hat_d)
        rn = batch_dot(r, r).sqrt()
        u = r / _col(torch.where(rn > 0, rn, torch.ones_like(rn)), r)  # grad of ||r|| w.r.t. A x_hat is -u
        out = x_hat_d + self.zeta * _col(sigma**2, x_t) * vjp(self.op.At(u))
        return self._finalize(out, x_hat_d)


class TMPD(PosteriorDenoiser):
    """Tweedie moment projected diffusion (Boys et al. 2023), row-sum diagonal approximation::

        c = A V A^T 1 = sigma^2 A J^T A^T 1                   (one VJP, J symmetric as in MMPS)
        v = (y - A x_hat) / (noise_std^2 + c)                  (elementwise)
        E[x | x_t, y] ~ x_hat + sigma^2 J^T A^T v              (second VJP)

    Entries with noise_std^2 + c <= 0 or non-finite (possible: row sums of a non-diagonal A V A^T
    may be negative) get v = 0 (that observation is ignored for the step) and the sample counts as
    a breakdown.
    """

    name = "tmpd"
    OPTIONS = ()

    def _estimate(self, x_t, sigma, y):
        x_hat, vjp = self._linearize(x_t, sigma)
        x_hat_d = x_hat.detach()
        s2x = _col(sigma**2, x_t)
        b = y - self.op.A(x_hat_d)
        c = self.op.A(s2x * vjp(self.op.At(torch.ones_like(y))))
        den = self.noise_std**2 + c
        good = (den > 0) & torch.isfinite(den)
        v = torch.where(good, b / torch.where(good, den, torch.ones_like(den)), torch.zeros_like(b))
        bad = (~good & (b != 0)).reshape(b.shape[0], -1).any(dim=1)
        self.stats["breakdowns"] += int(bad.sum())
        out = x_hat_d + s2x * vjp(self.op.At(v))
        return self._finalize(out, x_hat_d)


class DiffPIR(PosteriorDenoiser):
    """DiffPIR data-consistency step (Zhu et al. 2023), see the module docstring::

        (A^T A + rho_t I) delta = A^T (y - A x_hat),   rho_t = lam noise_std^2 / sigma^2,
        x_0 = x_hat + delta

    solved by CG (``maxiter`` default 100, ``rtol`` default 1e-2 sqrt(eps)); no VJP. Options ``lam``
    (default 1.0), ``maxiter``, ``rtol``. With noise_std = 0 (rho = 0) CG from delta = 0 stays in the
    range of A^T and returns the minimum-norm correction (hard data consistency).
    """

    name = "diffpir"
    OPTIONS = ("lam", "maxiter", "rtol")

    def __init__(self, denoiser, op, y, lam: float = 1.0, maxiter: int = 100, rtol: float | None = None):
        super().__init__(denoiser, op, y)
        self.lam = _nonneg_float("lam", lam, positive=True)
        self.maxiter = _positive_int("maxiter", maxiter)
        self.rtol = None if rtol is None else _nonneg_float("rtol", rtol)

    def _estimate(self, x_t, sigma, y):
        with torch.no_grad():
            x_hat = self.denoiser(x_t, sigma)
        if not isinstance(x_hat, Tensor) or x_hat.shape != x_t.shape:
            raise ValueError(
                f"denoiser: returned shape {tuple(getattr(x_hat, 'shape', ()))}, expected {tuple(x_t.shape)}"
            )
        x_hat = x_hat.detach()
        rho = _col(self.lam * self.noise_std**2 / sigma**2, x_t)
        A, At = self.op.A, self.op.At
        rhs = At(y - A(x_hat))
        rtol = _default_rtol(x_t.dtype) if self.rtol is None else self.rtol
        delta, info = cg(
            lambda v: At(A(v)) + rho * v,
            rhs,
            maxiter=self.maxiter,
            tol=(rtol * batch_dot(rhs, rhs).sqrt()).nan_to_num(0.0, 0.0),
        )
        self._record_solve(info, rhs)
        return self._finalize(x_hat + delta, x_hat)


METHODS: dict[str, type[PosteriorDenoiser]] = {
    "mmps": MMPS,
    "dps": DPS,
    "pigdm": PiGDM,
    "tmpd": TMPD,
    "diffpir": DiffPIR,
}


def make_posterior(method: str, denoiser: Denoiser, op: Any, y: Tensor, **options: Any) -> PosteriorDenoiser:
    """Build the posterior denoiser ``method`` in METHODS; ``options`` are the class's OPTIONS."""
    if method not in METHODS:
        raise ValueError(f"method: must be one of {tuple(METHODS)}, got {method!r}")
    cls = METHODS[method]
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise ValueError(f"{method}: unknown option {unknown[0]!r}; expected some of {list(cls.OPTIONS)}")
    return cls(denoiser, op, y, **options)
