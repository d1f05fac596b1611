"""Variance-exploding diffusion core: schedule, preconditioned denoiser, DSM loss, EMA and samplers.

Conventions (diem-neurips Section 2 and Appendix C). The forward process is VE (Eq. (1)-(2) with
f_t = 0, alpha_t = 1)::

    x_t = x + sigma_t z,   z ~ N(0, I).

A *denoiser* is any callable ``d(x_t, sigma) -> E[x | x_t]`` with ``x_t`` of shape (B, *event_shape)
and ``sigma`` a tensor of shape (B,). The score follows from Tweedie's formula, Eq. (5)::

    s(x_t) = (d(x_t, sigma) - x_t) / sigma^2.

The samplers below only ever call the denoiser, so a posterior denoiser (a closure around a prior
denoiser and an observation, Algorithm 3) is sampled from exactly like a prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from emprior.core.errors import NumericalError

Denoiser = Callable[[Tensor, Tensor], Tensor]

SAMPLERS = ("ddpm", "ddim", "pc")


def batch_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` as a (B,) tensor on ``x``'s device/dtype; a float or 0-d tensor is broadcast."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        return sigma.expand(x.shape[0])
    if sigma.dim() == 1 and sigma.shape[0] in (1, x.shape[0]):
        return sigma.expand(x.shape[0])
    raise ValueError(f"sigma: expected a scalar or shape ({x.shape[0]},), got shape {tuple(sigma.shape)}")


def _expand_as(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against (B, *event_shape)."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


class Schedule:
    """Exponential VE noise schedule, Eq. (27)::

        sigma_t = exp((1 - t) log sigma_min + t log sigma_max),  t in [0, 1].

    The paper uses sigma_min = 1e-3, sigma_max = 1e2 (the official manifold code uses sigma_max = 1e1).
    """

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1e2):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not (math.isfinite(sigma_min) and sigma_min > 0):
            raise ValueError(f"sigma_min: must be a positive finite number, got {sigma_min!r}")
        if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
            raise ValueError(f"sigma_max: must be finite and > sigma_min={sigma_min!r}, got {sigma_max!r}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.log_min = math.log(sigma_min)
        self.log_max = math.log(sigma_max)

    def __repr__(self) -> str:
        return f"Schedule(sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r})"

    def sigma(self, t: Tensor | float) -> Tensor:
        """sigma_t of Eq. (27), elementwise in ``t`` (any shape)."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return torch.exp((1 - t) * self.log_min + t * self.log_max)

    def discretize(self, steps: int) -> Tensor:
        """The sampling grid: sigma at t = 1, (steps-1)/steps, ..., 1/steps, 0.

        Returns a float64 tensor of length ``steps + 1``, strictly decreasing from sigma_max to
        sigma_min (the last grid point is sigma_min, not 0).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: must be a positive integer, got {steps!r}")
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return self.sigma(t)


class PreconditionedDenoiser(nn.Module):
    """EDM preconditioning, Eq. (26)::

        d(x_t, sigma) = c_skip x_t + c_out h(c_in x_t, sigma),
        c_skip = 1/(sigma^2 + 1),  c_out = sigma/sqrt(sigma^2 + 1),  c_in = 1/sqrt(sigma^2 + 1).

    With h = 0, d(x_t, sigma) = x_t/(sigma^2 + 1), which is exactly E[x | x_t] for x ~ N(0, I):
    the network only has to learn the departure of the data from a standard normal. ``c_in`` keeps
    the network input at unit variance when the data has unit variance.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = batch_sigma(sigma, x_t)
        s = _expand_as(sigma, x_t)
        c_out = s / torch.sqrt(s**2 + 1)
        c_in = 1 / torch.sqrt(s**2 + 1)
        # c_skip x_t written as a division so that h = 0 gives x_t/(s^2 + 1) bit for bit.
        return x_t / (s**2 + 1) + c_out * self.net(c_in * x_t, sigma)


def sample_beta33(n: int, generator: torch.Generator | None = None, device=None, dtype=None) -> Tensor:
    """t ~ Beta(3, 3) as the median of 5 i.i.d. U(0, 1) (the k-th of n order statistics of uniforms
    is Beta(k, n + 1 - k)); unlike ``torch.distributions.Beta`` this honours ``generator``."""
    u = torch.rand((n, 5), generator=generator, device=device, dtype=dtype)
    return u.median(dim=1).values


def dsm_loss(
    denoiser: Denoiser, x: Tensor, schedule: Schedule, generator: torch.Generator | None = None
) -> Tensor:
    """Denoising score matching loss, Eq. (4), with the weights of Appendix C::

        t ~ Beta(3, 3),  z ~ N(0, I),  x_t = x + sigma_t z,  lambda_t = 1/sigma_t^2 + 1,
        loss = mean_b [ lambda_{t_b} ||d(x_t_b, sigma_{t_b}) - x_b||^2 / N ]

    where N is the number of elements per sample (normalised per element, so the loss scale does not
    depend on the image size; it only rescales the gradient w.r.t. the paper's unnormalised sum).
    With the preconditioning of Eq. (26) and lambda_t = 1/sigma^2 + 1 = 1/c_out^2, the per-element
    target of h has unit scale at every noise level. ``generator`` drives both t and z.
    """
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected shape (B, *event_shape) with B > 0, got {tuple(x.shape)}")
    b = x.shape[0]
    t = sample_beta33(b, generator=generator, device=x.device, dtype=x.dtype)
    sigma = schedule.sigma(t).to(x.dtype)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_t = x + _expand_as(sigma, x) * z
    err = (denoiser(x_t, sigma) - x).reshape(b, -1).square().mean(dim=1)
    lam = 1 / sigma**2 + 1
    return (lam * err).mean()


class EMA:
    """Exponential moving average of a model's parameters::

        shadow <- decay * shadow + (1 - decay) * param      (after every optimiser step)

    Floating-point buffers are averaged the same way; other buffers are copied. ``copy_to`` writes
    the averages into a model (e.g. a copy used for sampling).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in self._tensors(model)}
        self._pairs: tuple | None = None

    @staticmethod
    def _tensors(model: nn.Module) -> Iterable[tuple[str, Tensor]]:
        yield from model.named_parameters()
        yield from model.named_buffers()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # The (shadow, tensor) pairing is built once per model: walking the module tree every step
        # costs several % of a small network's training step.
        if self._pairs is None or self._pairs[0] is not model:
            floats, values, others = [], [], []
            for name, value in self._tensors(model):
                if name not in self.shadow:
                    raise KeyError(f"EMA.update: model has tensor {name!r} that the EMA was not built with")
                avg = self.shadow[name]
                if avg.is_floating_point():
                    floats.append(avg)
                    values.append(value.detach())
                else:
                    others.append((avg, value))
            self._pairs = (model, floats, values, others)
        _, floats, values, others = self._pairs
        if floats:  # one fused kernel over all tensors: shadow + (1 - decay) (param - shadow)
            torch._foreach_lerp_(floats, values, 1 - self.decay)
        for avg, value in others:
            avg.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, value in self._tensors(model):
            if name not in self.shadow:
                raise KeyError(f"EMA.copy_to: model has tensor {name!r} that the EMA was not built with")
            value.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA.load_state_dict: missing tensor {min(missing)!r}")
        self.decay = float(state["decay"])
        for k, v in state["shadow"].items():
            if k in self.shadow:
                self.shadow[k].copy_(v)


def _check_finite(x: Tensor, i: int, steps: int, s: float) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(f"non-finite values in sampling at step {i}/{steps} (sigma={s:.3g})")


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    steps: int,
    sampler: str = "ddpm",
    *,
    corrections: int = 0,
    tau: float = 0.1,
    eta: float = 1.0,
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

    After the last step (x at sigma_min) ``final_denoise`` returns d(x, sigma_min) instead of x.

    Steps are numbered by the grid index of the noise level at which the denoiser was evaluated:
    step i (0 <= i < steps) evaluates at sigma_i and moves to sigma_{i+1}; "pc" corrections at
    sigma_{i+1} count as step i + 1; the final denoise is step ``steps`` at sigma_min.
    A non-finite state after any update raises ``NumericalError`` naming
    that step and noise level.

    Runs under ``torch.no_grad()`` (not inference mode), so a denoiser that needs autograd (e.g. a
    vector-Jacobian product in MMPS) may re-enable it internally with ``torch.enable_grad()``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(corrections, bool) or not isinstance(corrections, int) or corrections < 0:
        raise ValueError(f"corrections: must be a non-negative integer, got {corrections!r}")
    if not (math.isfinite(float(tau)) and tau > 0):
        raise ValueError(f"tau: must be a positive finite number, got {tau!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta: must be in [0, 1], got {eta!r}")
    if x_T.dim() < 2 or x_T.shape[0] == 0:
        raise ValueError(f"x_T: expected shape (B, *event_shape) with B > 0, got {tuple(x_T.shape)}")
    sigmas = schedule.discretize(steps).tolist()
    n = x_T.shape[0]

    def d(x: Tensor, s: float) -> Tensor:
        return denoiser(x, torch.full((n,), s, dtype=x.dtype, device=x.device))

    with torch.no_grad():
        x = x_T.clone()
        for i in tqdm(range(steps), disable=not progress, desc=f"sampling ({sampler})", leave=False):
            s, s_next = sigmas[i], sigmas[i + 1]
            x_hat = d(x, s)
            if sampler == "ddpm" or (sampler == "ddim" and eta == 1.0):
                r = s_next**2 / s**2
                x = r * x + (1 - r) * x_hat + s_next * math.sqrt(1 - r) * _noise(x, generator)
            else:
                c = (float(eta) if sampler == "ddim" else 0.0) * s_next * math.sqrt(1 - s_next**2 / s**2)
                x = x_hat + math.sqrt(max(s_next**2 - c**2, 0.0)) / s * (x - x_hat)
                if c > 0:
                    x = x + c * _noise(x, generator)
            _check_finite(x, i, steps, s)
            if sampler == "pc":
                for _ in range(corrections):
                    x_hat = d(x, s_next)
                    eps_rms = ((x - x_hat) / s_next).reshape(n, -1).square().mean(1).sqrt()
                    t = (float(tau) / eps_rms.clamp_min(1.0)).reshape(n, *[1] * (x.dim() - 1))
                    x = x + t * (x_hat - x) + torch.sqrt(2 * t) * s_next * _noise(x, generator)
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
