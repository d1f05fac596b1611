"""Reverse-process samplers (DDPM, DDIM, predictor-corrector) as plug-ins, and the sampling loop.

The samplers only ever call the denoiser, so a posterior denoiser (a closure around a prior
denoiser and an observation, Algorithm 3) is sampled from exactly like a prior.

A sampler is a :class:`ReverseStep` registered in :data:`DIFFUSION_SAMPLERS` with its options
dataclass: ``predict`` moves x from sigma_i to sigma_{i+1}, then ``correct`` runs ``corrections``
times at sigma_{i+1}. :func:`sample` owns the grid, the finiteness checks and the final denoise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from emprior.core.errors import NumericalError
from emprior.core.registry import Registry, option
from emprior.diffusion.schedule import Denoiser, Schedule

__all__ = ["DDIM", "DDPM", "DIFFUSION_SAMPLERS", "DDIMOptions", "PCOptions", "PredictorCorrector", "ReverseStep",
           "sample", "sample_prior"]

DIFFUSION_SAMPLERS: Registry[type[ReverseStep]] = Registry("diffusion sampler", "sampler")

LevelDenoiser = Callable[[Tensor, float], Tensor]  # d(x, s) at one noise level s for the whole batch


def _check_finite(x: Tensor, i: int, steps: int, s: float) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(f"non-finite values in sampling at step {i}/{steps} (sigma={s:.3g})")


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _ddpm_update(x: Tensor, x_hat: Tensor, s: float, s_next: float, generator: torch.Generator | None) -> Tensor:
    """The Gaussian bridge q(x_{s'} | x_s, x = x_hat) (Algorithm 2)."""
    r = s_next**2 / s**2
    return r * x + (1 - r) * x_hat + s_next * math.sqrt(1 - r) * _noise(x, generator)


def _ddim_update(x: Tensor, x_hat: Tensor, s: float, s_next: float, eta: float,
                 generator: torch.Generator | None) -> Tensor:
    """DDIM for VE with stochasticity eta; no noise is drawn when c = 0 (eta = 0)."""
    c = eta * s_next * math.sqrt(1 - s_next**2 / s**2)
    x = x_hat + math.sqrt(max(s_next**2 - c**2, 0.0)) / s * (x - x_hat)
    if c > 0:
        x = x + c * _noise(x, generator)
    return x


class ReverseStep:
    """Base class of a sampler: ``predict`` from s to s' < s, and ``corrections`` ``correct`` steps at s'."""

    corrections = 0

    def __init__(self, options: object):
        self.options = options

    def grid(self, schedule: Schedule, steps: int) -> Tensor:
        """The noise levels sigma_0 = sigma_max > ... > sigma_steps = sigma_min (float64, length steps + 1);
        default: the schedule's own grid (:meth:`Schedule.discretize`)."""
        return schedule.discretize(steps)

    def predict(self, d: LevelDenoiser, x: Tensor, s: float, s_next: float,
                generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def correct(self, d: LevelDenoiser, x: Tensor, s: float, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no corrector")


@DIFFUSION_SAMPLERS.register("ddpm")
class DDPM(ReverseStep):
    """Ancestral sampling, Algorithm 2: x' = (s'^2/s^2) x + (1 - s'^2/s^2) x_hat + sqrt(s'^2 - s'^4/s^2) z."""

    def predict(self, d, x, s, s_next, generator):
        return _ddpm_update(x, d(x, s), s, s_next, generator)


@dataclass(frozen=True)
class DDIMOptions:
    eta: float = option(1.0, minimum=0, maximum=1, doc="stochasticity: 0 deterministic, 1 the DDPM update")


@DIFFUSION_SAMPLERS.register("ddim", DDIMOptions)
class DDIM(ReverseStep):
    """DDIM for VE: x' = x_hat + sqrt(s'^2 - c^2) (x - x_hat)/s + c z, c = eta sqrt(s'^2 - s'^4/s^2)."""

    def predict(self, d, x, s, s_next, generator):
        x_hat = d(x, s)
        eta = self.options.eta
        if eta == 1.0:  # sqrt(s'^2 - c^2) = s'^2/s: the DDPM update, taken in its own form (bit for bit ddpm)
            return _ddpm_update(x, x_hat, s, s_next, generator)
        return _ddim_update(x, x_hat, s, s_next, float(eta), generator)


@dataclass(frozen=True)
class PCOptions:
    corrections: int = option(0, minimum=0, doc="Langevin corrector steps after each predictor step")
    tau: float = option(0.1, exclusiveMinimum=0, doc="Langevin step size (shrunk per sample by rms(eps_hat))")


@DIFFUSION_SAMPLERS.register("pc", PCOptions)
class PredictorCorrector(ReverseStep):
    """Predictor-corrector: a deterministic DDIM step (eta = 0), then ``corrections`` Langevin steps at s'."""

    def __init__(self, options: PCOptions):
        super().__init__(options)
        self.corrections = options.corrections

    def predict(self, d, x, s, s_next, generator):
        return _ddim_update(x, d(x, s), s, s_next, 0.0, generator)

    def correct(self, d, x, s, generator):
        # x <- x + tau' (d(x, s) - x) + sqrt(2 tau') s z,  tau' = tau / max(1, rms(eps_hat))
        n = x.shape[0]
        x_hat = d(x, s)
        eps_rms = ((x - x_hat) / s).reshape(n, -1).square().mean(1).sqrt()
        t = (float(self.options.tau) / eps_rms.clamp_min(1.0)).reshape(n, *[1] * (x.dim() - 1))
        return x + t * (x_hat - x) + torch.sqrt(2 * t) * s * _noise(x, generator)


def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    steps: int,
    sampler: str = "ddpm",
    *,
    corrections: int = PCOptions.corrections,  # the defaults are the plug-ins' (0, 0.1, 1.0)
    tau: float = PCOptions.tau,
    eta: float = DDIMOptions.eta,
    rho: float = 7.0,
    final_denoise: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Integrate from x_T ~ N(0, sigma_max^2 I) down the grid ``schedule.discretize(steps)``.

    With s = sigma_i, s' = sigma_{i+1} < s, x_hat = d(x, s) and z ~ N(0, I):

    - ``"ddpm"`` (Algorithm 2)::

          x' = (s'^2/s^2) x + (1 - s'^2/s^2) x_hat + sqrt(s'^2 - s'^4/s^2) z

      i.e. the Gaussian bridge q(x_{s'} | x_s, x = x_hat).
    - ``"ddim"`` (DDIM for VE with stochasticity eta in [0, 1])::

          c  = eta * sqrt(s'^2 - s'^4/s^2)
          x' = x_hat + sqrt(s'^2 - c^2) (x - x_hat)/s + c z

      eta = 0 is deterministic, x' = x_hat + (s'/s)(x - x_hat); eta = 1 gives
      sqrt(s'^2 - c^2) = s'^2/s, which is the "ddpm" update exactly.
    - ``"pc"`` (predictor-corrector, Song et al. 2021; Rozet et al. 2023 as in Appendix C): a
      deterministic DDIM predictor (eta = 0, the ``eta`` argument is ignored) to s', then
      ``corrections`` unadjusted Langevin steps at s'::

          x <- x + delta * score + sqrt(2 delta) z,  score = (d(x, s') - x)/s'^2,  delta = tau' s'^2

      so each corrector step is x <- x + tau' (d(x, s') - x) + sqrt(2 tau') s' z, with the step size
      normalised per sample as in Rozet & Louppe (2023) and the official DiEM code,
      tau' = tau / max(1, rms(eps_hat)), eps_hat = (x - d(x, s')) / s': a noise prediction much
      larger than unit size (a strong likelihood score far from the data) shrinks the step instead
      of throwing the sample away.
    - ``"heun"`` (:mod:`emprior.diffusion.heun`, EDM Algorithm 1, deterministic) on the rho-spaced grid
      of the sampler's ``grid`` (``rho`` is its option; the other samplers ignore it).

    After the last step (x at sigma_min) ``final_denoise`` returns d(x, sigma_min) instead of x.

    Steps are numbered by the grid index of the noise level at which the denoiser was evaluated:
    step i (0 <= i < steps) evaluates at sigma_i and moves to sigma_{i+1}; "pc" corrections at
    sigma_{i+1} count as step i + 1; the final denoise is step ``steps`` at sigma_min.
    A non-finite state after any update raises ``NumericalError`` naming
    that step and noise level.

    Runs under ``torch.no_grad()`` (not inference mode), so a denoiser that needs autograd (e.g. a
    vector-Jacobian product in MMPS) may re-enable it internally with ``torch.enable_grad()``.
    """
    names = tuple(DIFFUSION_SAMPLERS.names())
    if sampler not in names:
        raise ValueError(f"sampler: must be one of {names}, got {sampler!r}")
    if isinstance(corrections, bool) or not isinstance(corrections, int) or corrections < 0:
        raise ValueError(f"corrections: must be a non-negative integer, got {corrections!r}")
    if not (math.isfinite(float(tau)) and tau > 0):
        raise ValueError(f"tau: must be a positive finite number, got {tau!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta: must be in [0, 1], got {eta!r}")
    if x_T.dim() < 2 or x_T.shape[0] == 0:
        raise ValueError(f"x_T: expected shape (B, *event_shape) with B > 0, got {tuple(x_T.shape)}")
    n = x_T.shape[0]

    def d(x: Tensor, s: float) -> Tensor:
        return denoiser(x, torch.full((n,), s, dtype=x.dtype, device=x.device))

    entry = DIFFUSION_SAMPLERS.entry(sampler)
    given = {"eta": eta, "corrections": corrections, "tau": tau, "rho": rho}  # each sampler takes the ones it declares
    step = entry.obj(entry.options(**{f.name: given[f.name] for f in dataclasses.fields(entry.options)}))
    sigmas = step.grid(schedule, steps).tolist()

    with torch.no_grad():
        x = x_T.clone()
        for i in tqdm(range(steps), disable=not progress, desc=f"sampling ({sampler})", leave=False):
            s, s_next = sigmas[i], sigmas[i + 1]
            x = step.predict(d, x, s, s_next, generator)
            _check_finite(x, i, steps, s)
            for _ in range(step.corrections):
                x = step.correct(d, x, s_next, generator)
                _check_finite(x, i + 1, steps, s_next)
        if final_denoise:
            x = d(x, sigmas[-1])
            _check_finite(x, steps, steps, sigmas[-1])
    return x


def sample_prior(
    denoiser: Denoiser,
    n: int,
    shape: Sequence[int],
    schedule: Schedule,
    steps: int,
    sampler: str = "ddpm",
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kw,
) -> Tensor:
    """Draw x_T ~ N(0, sigma_max^2 I) of shape (n, *shape) with ``generator`` and call :func:`sample`.

    ``device``/``dtype`` default to those of the denoiser's first parameter (CPU/float32 otherwise).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a positive integer, got {n!r}")
    shape = tuple(int(k) for k in shape)
    if any(k < 1 for k in shape):
        raise ValueError(f"shape: all sizes must be positive, got {shape}")
    if isinstance(denoiser, nn.Module):
        p = next(iter(denoiser.parameters()), None)
        if p is not None:
            device = p.device if device is None else device
            dtype = p.dtype if dtype is None else dtype
    dtype = torch.get_default_dtype() if dtype is None else dtype
    x_T = schedule.sigma_max * torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)
    return sample(denoiser, x_T, schedule, steps, sampler, generator=generator, **kw)
