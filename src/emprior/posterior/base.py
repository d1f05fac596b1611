"""Posterior denoisers: estimates of E[x | x_t, y] for y = A x + e, e ~ N(0, noise_std^2 I).

The base class, its shared helpers, the registry :data:`POSTERIOR_SAMPLERS` and :func:`make_posterior`;
each method lives in its own module (:mod:`.mmps`, :mod:`.pigdm`, :mod:`.dps`, :mod:`.tmpd`,
:mod:`.diffpir`) and registers itself there with its options dataclass.

Every method is a callable ``post(x_t, sigma) -> E[x | x_t, y]`` with the denoiser interface, so
the samplers of :mod:`emprior.diffusion.samplers` sample the posterior exactly as they sample the prior.
By Tweedie (Eq. (24)) a posterior denoiser is equivalent to a posterior score:

    E[x | x_t, y] = x_t + sigma^2 (grad log p(x_t) + grad log p(y | x_t))
                  = x_hat + sigma^2 grad_{x_t} log p(y | x_t),          x_hat = d(x_t, sigma),

which is what Algorithm 3 returns (s_x + s_{y|x}, times Sigma_t = sigma^2 I, plus x_t). The methods
differ in their estimate of the likelihood score.

VJPs: the denoiser's graph is built once per call (x_t.requires_grad_ under torch.enable_grad, so
it works inside the samplers' torch.no_grad) and every J^T u is torch.autograd.grad(..., retain_graph
=True). Returned tensors are detached.

Statistics (``.stats``, accumulated over calls; ``summary()`` gives per-call means): calls, vjps,
vjps_per_call (last call), solves, solver_iterations, residual_norm_sum / relative_residual_sum (final
||b - M v|| and ||b - M v|| / ||b||, averaged over the batch, summed over solves), breakdowns
(samples), fallbacks (samples).

NaN safety: a solver breakdown (p^T M p <= 0, e.g. a non-SPD Jacobian; a non-finite matvec) freezes
that sample at its last finite iterate (:mod:`emprior.linalg`), which is a shorter truncated solve, and
is counted in ``breakdowns``. If the final estimate of a sample is still non-finite it falls back to
x_hat (the unconditional denoiser, i.e. no guidance at this step) and is counted in ``fallbacks``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from emprior.core.registry import NoOptions, Registry
from emprior.diffusion.schedule import Denoiser, batch_sigma
from emprior.linalg import SolveInfo, batch_dot

__all__ = ["POSTERIOR_SAMPLERS", "PosteriorDenoiser", "make_posterior"]

POSTERIOR_SAMPLERS: Registry[type[PosteriorDenoiser]] = Registry("posterior sampler", "method")

# One text for an option several samplers take, so the generated config schema types it once.
MAXITER_DOC = "Krylov iterations (matvecs) per solve"
TOL_DOC = "absolute residual tolerance of the solve"
SOLVER_DOC = "Krylov solver: cg (Algorithm 4) or gmres"


def col(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcasting against ``like``."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def default_rtol(dtype: torch.dtype) -> float:
    """A relative residual reachable by CG in ``dtype`` (1.5e-10 in float64, 3.5e-6 in float32)."""
    return 1e-2 * math.sqrt(torch.finfo(dtype).eps)


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def nonneg_float(name: str, value: Any, positive: bool = False) -> float:
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
    per sample of x_t (a batch of 1 is broadcast); ``options`` the subclass's options dataclass.
    """

    # Keyword arguments that are objects, not config options, so not in the options dataclass.
    runtime_args: tuple[str, ...] = ()

    def __init__(self, denoiser: Denoiser, op: Any, y: Tensor, options: Any = None):
        if not callable(denoiser):
            raise TypeError(f"denoiser: expected a callable d(x_t, sigma), got {type(denoiser).__name__}")
        for attr in ("A", "At", "noise_std"):
            if not hasattr(op, attr):
                raise TypeError(f"op: {type(op).__name__} has no attribute {attr!r} (need A, At, noise_std)")
        if not isinstance(y, Tensor) or y.dim() < 2 or y.shape[0] == 0:
            raise ValueError(f"y: expected a tensor of shape (B, *y_shape), got {getattr(y, 'shape', y)!r}")
        self.denoiser = denoiser
        self.op = op
        self.options = NoOptions() if options is None else options
        self.y = y.detach()
        self.noise_std = nonneg_float("op.noise_std", op.noise_std)
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
            out = torch.where(col(ok, out), out, x_hat)
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


def make_posterior(method: str, denoiser: Denoiser, op: Any, y: Tensor, **options: Any) -> PosteriorDenoiser:
    """Build the posterior denoiser registered as ``method``; ``options`` are the fields of its options
    dataclass and its ``runtime_args`` (e.g. mmps's ``prior``). Unknown ones are a one-line ValueError."""
    if method not in POSTERIOR_SAMPLERS:
        raise ValueError(f"method: must be one of {tuple(POSTERIOR_SAMPLERS.names())}, got {method!r}")
    entry = POSTERIOR_SAMPLERS.entry(method)
    fields = [f.name for f in dataclasses.fields(entry.options)]
    allowed = [*fields, *entry.obj.runtime_args]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{method}: unknown option {unknown[0]!r}; expected some of {allowed}")
    opts = entry.options(**{k: v for k, v in options.items() if k in fields})
    runtime = {k: v for k, v in options.items() if k not in fields}
    return entry.obj(denoiser, op, y, opts, **runtime)
