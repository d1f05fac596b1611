"""AmbientDiffusion (Daras et al. 2023): a diffusion model trained on masked observations only, by
corrupting them further and scoring the network on the pixels that were observed.

Method, as the paper states it. Each observation is y = A x (A = diag(m), a pixel mask). A further
corruption B (every observed pixel deleted again with probability ``delta``) gives A~ = B A. With
x_t = x + sigma z, the network h(A~ x_t, A~, sigma) sees the noisy image only through the further
mask and the mask itself, and is trained with

    loss = E || A (h(A~ x_t, A~, sigma) - x) ||^2,

which needs only A x = y and A x_t = y + sigma A z (noise added where observed). Since the network
cannot tell the pixels B hid from those A hid, minimising the loss on the pixels A kept makes h
the conditional expectation E[x | A~ x_t, A~] on every pixel (Daras et al., Theorem 4.1).

Mapping onto this suite:

- stages ("mstep",): no q_0, no E-step; the rule ``mstep`` passes ``data = obs.y`` and the
  :class:`~emprior.data.observations.Observations` (masks from ``obs.op.measured``). DAG iteration
  k is the k-th chunk of ONE training run (the reference trains once, ``training_loop.py``): the
  experiment's ``mstep`` budget per chunk (steps or epochs, batch size, Adam, EMA, clip, augment), the
  lr schedule spanning all ``iterations`` chunks, and chunk k continuing chunk k-1's raw weights,
  Adam state, lr schedule, EMA and step counter (``train_state`` in model.pt; ``uses_previous(k) =
  k >= 2``), so Fig. 4 gets a curve and the total budget equals the EM methods' M-step budget.
  ``training: restart`` gives each chunk a fresh optimiser, lr schedule and EMA (as DiEM's M-step).
  ``augment`` flips / crops an observation, its mask and its further mask together; ``mstep.max_abs``
  (a filter for E-step samples) does not apply to observations and is ignored.
- network: :class:`AmbientDenoiser`, the experiment's ``denoiser`` architecture built by
  :func:`~emprior.nets.conditional.build_conditional_denoiser` (the mask A~ as extra input
  channel(s)), with the EDM preconditioning (Eq. 26) taken per pixel: a pixel A~ shows has noise
  level sigma (c_in = 1/sqrt(sigma^2 + 1), c_skip = 1/(sigma^2 + 1), c_out = sigma/sqrt(sigma^2 + 1));
  a pixel A~ hides carries no information, which is noise level infinity (c_in = c_skip = 0,
  c_out = 1)::

      d(A~ x_t, A~, sigma) = A~ (x_t/(sigma^2 + 1) + c_out h) + (1 - A~) h,   h = h([c_in A~ x_t, A~], sigma)

  (with the plain preconditioning the hidden pixels' target for h would be y/c_out, about y/sigma:
  unbounded at low noise). A fresh net (zero output layer) is the N(0, I) denoiser restricted to what
  it sees.
- further masks: ``further_mask: fixed`` (reference, ``dataset.py`` seeds each image's masks by its
  index) draws B once per image (:func:`further_masks`, seeded by run, experiment and variant, not by
  the iteration), so an image is seen through the same A~ at every step and iteration; ``resample``
  draws B at every step.
- loss: :func:`ambient_loss`; noise levels ln sigma ~ N(-1.2, 1.2^2) (``noise: lognormal``, EDM's
  P_mean / P_std as the reference's ``AmbientLoss``; ``noise: beta``: t ~ Beta(3, 3) on the
  schedule) and the weight lambda = 1/c_out^2 of
  :func:`~emprior.diffusion.loss.dsm_loss` (which makes h's target unit-scale), per pixel with the
  pixel's noise level as above: 1/sigma^2 + 1 where A~ shows it (exactly dsm_loss's weight), 1 where
  A~ hides an observed pixel. The mean runs over each sample's *observed* elements (the weighted sum
  of A (d - y)^2 divided by the number of observed elements; dsm_loss divides by all elements), so a
  sample with few observed pixels is not down-weighted. The weights depend only on (A~, sigma), the
  network's own inputs, so the minimiser is still E[x | A~ x_t, A~] pixel by pixel. The observation
  noise (Sigma_y = noise_std^2 I, 1e-3 in the presets) is neglected, as in the paper (it treats y as
  noiseless).
- sampling: :class:`AmbientSamplingDenoiser` plugs d(A~ x_t, A~, sigma), clipped to [-clip, clip]
  (reference: ``tensor_clipping`` to its data range), as the denoiser E[x | x_t] into the reference's
  deterministic EDM Heun sampler (``sampler: heun``, :mod:`emprior.diffusion.heun`, ``sampler_steps``
  = 18 levels, ``rho`` = 7) on the experiment's schedule; ``sampler: evaluate`` uses the
  experiment's ``evaluate`` sampler and steps instead. The default ``sampling_mask: fixed`` is the paper's
  fixed-mask sampler: one mask A~ = B A per sample drawn from the *training* corruption distribution
  (the observation operator's draw, then the extra deletion delta) and kept for the whole trajectory,
  so the network is only ever evaluated on masks like those it was trained on (a full mask A~ = I
  would be outside its training distribution: it never saw more than (1 - rho)(1 - delta) of the
  pixels). ``resample`` draws a fresh training-distribution mask at every denoiser call; ``full``
  uses A~ = I (an ablation). Masks are drawn from a numpy stream seeded from the ``generator`` (so
  they do not depend on the device), then everything else follows the sampler.
- checkpoint: model.pt of ``kind="ambient"``, ``method="ambient"``: the denoiser layout (``x_shape``,
  ``net``, ``schedule``, ``weights`` (EMA), ``raw_weights``, ``train``) plus ``cond_channels``,
  ``corruption`` ({operator, options, delta}: what the sampler draws its masks from) and, with
  ``training: continue``, ``train_state`` (Adam state, lr schedule, step, EMA decay; the EMA shadow is
  ``weights``); :func:`~emprior.priors.checkpoint.prior_from_checkpoint` asks
  :meth:`Ambient.build_networks` for the module.
- resume: the full training state goes to ``<out>.resume.pt`` every ``checkpoint_every`` steps (as
  the DSM M-step does); a rerun continues from it with the same weights as an uninterrupted run.

Only operators whose measurement is a subset of the pixels (``measured()`` is not None and y has
the shape of x: pixel_mask, box_mask) are supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from emprior.core.errors import ArtifactError, ConfigError
from emprior.core.log import get_logger
from emprior.core.registry import option
from emprior.diffusion.schedule import batch_sigma, expand_as_batch
from emprior.methods.base import EM_METHODS, EMMethod
from emprior.nets.conditional import ConditionalDenoiser

if TYPE_CHECKING:
    from emprior.core.job import Job
    from emprior.core.precision import Precision
    from emprior.data.observations import Observations
    from emprior.diffusion.schedule import Schedule
    from emprior.priors.checkpoint import Prior

log = get_logger("emprior.methods.ambient")

SAMPLING_MASKS = ("fixed", "resample", "full")
FURTHER_MASKS = ("fixed", "resample")
NOISE = ("lognormal", "beta")
TRAINING = ("continue", "restart")


@dataclass(frozen=True)
class AmbientOptions:
    delta: float = option(0.1, minimum=0, exclusiveMaximum=1,
                          doc="extra deletion: probability that an observed pixel is hidden again (paper: 0.1)")
    sampling_mask: str = option("fixed", enum=list(SAMPLING_MASKS),
                                doc="mask A~ at sampling: fixed (one training-distribution mask per sample, the "
                                    "paper's fixed-mask sampler), resample (fresh at each denoiser call), "
                                    "full (A~ = I)")
    further_mask: str = option("fixed", enum=list(FURTHER_MASKS),
                               doc="training mask A~ = B A: fixed (B drawn once per image by seed, the same at every "
                                   "step and iteration, the reference) or resample (a fresh B at every step)")
    noise: str = option("lognormal", enum=list(NOISE),
                        doc="training noise levels: lognormal (EDM, ln sigma ~ N(p_mean, p_std^2), the reference) "
                            "or beta (t ~ Beta(3, 3) on the schedule, the suite's DSM loss)")
    p_mean: float = option(-1.2, doc="mean of ln sigma for noise: lognormal (reference: -1.2)")
    p_std: float = option(1.2, exclusiveMinimum=0, doc="std of ln sigma for noise: lognormal (reference: 1.2)")
    training: str = option("continue", enum=list(TRAINING),
                           doc="continue (one training run across the DAG iterations: optimiser, lr schedule over "
                               "all iterations, EMA and step counter resumed from the previous model.pt, the "
                               "reference) or restart (each iteration a fresh optimiser, lr schedule and EMA)")
    sampler: str = option("heun", doc="prior sampler: heun (EDM deterministic Heun, the reference) or evaluate "
                                      "(the experiment's evaluate sampler and steps)")
    sampler_steps: int = option(18, minimum=2, doc="EDM num_steps of the heun sampler (noise levels, plus the final "
                                                   "step to 0; reference: 18)")
    rho: float = option(7.0, exclusiveMinimum=0, doc="grid exponent of the heun sampler (reference: 7)")
    clip: float = option(2.0, minimum=0, doc="clip the denoiser output to [-clip, clip] while sampling (reference: "
                                             "its data range [-1, 1]; the digits/CIFAR range is [-2, 2]); 0: off")


# -- corruption and loss --------------------------------------------------------------------------

def further_corrupt(mask: Tensor, delta: float, generator: torch.Generator | None = None) -> Tensor:
    """A~ = B A: every observed entry of ``mask`` (0/1) is hidden again with probability ``delta``
    (independently per sample and entry); a hidden entry stays hidden."""
    u = torch.rand(mask.shape, generator=generator, device=mask.device, dtype=mask.dtype)
    return mask * (u >= delta).to(mask.dtype)


def ambient_loss(denoiser, y: Tensor, mask: Tensor, schedule: Schedule, delta: float,
                 generator: torch.Generator | None = None, a_tilde: Tensor | None = None, noise: str = "beta",
                 p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """The AmbientDiffusion loss on a batch of observations y (B, *x_shape) with masks A (0/1,
    broadcastable to y; mask channels are the condition channels)::

        t ~ Beta(3, 3),  z ~ N(0, I),  A x_t = A y + sigma A z,  A~ = B A,
        loss = mean_b [ sum_i lambda_bi A_bi (d(A~_b x_t, A~_b, sigma_b)_i - y_bi)^2 / |A_b| ],
        lambda_bi = 1/sigma_b^2 + 1 where A~_bi = 1, 1 where A~_bi = 0 (1/c_out^2 of the pixel's
        noise level, see the module docstring),  |A_b| = number of observed elements of sample b

    ``denoiser(x_t, cond, sigma)`` is a conditional denoiser. Values of y (and of the noise) at
    unobserved entries never reach the network nor the loss. ``generator`` drives t, z and B.
    ``a_tilde`` (0/1 like ``mask``): the further-corrupted masks A~ to use instead of drawing B (the
    reference's per-image masks, ``dataset.py`` seeds them by image index); it is multiplied by A.
    ``noise="lognormal"``: ln sigma ~ N(p_mean, p_std^2) (EDM, the reference's ``AmbientLoss``) instead
    of t ~ Beta(3, 3).
    """
    from emprior.diffusion.loss import sample_beta33
    from emprior.diffusion.schedule import expand_as_batch

    if y.dim() < 2 or y.shape[0] == 0:
        raise ValueError(f"y: expected shape (B, *event_shape) with B > 0, got {tuple(y.shape)}")
    b = y.shape[0]
    observed = mask.expand(b, *mask.shape[1:]) > 0
    full = observed.expand_as(y) if observed.shape != y.shape else observed
    y = torch.where(full, y, torch.zeros((), dtype=y.dtype, device=y.device))  # A y, whatever y holds elsewhere
    if noise == "lognormal":
        n = torch.randn((b,), generator=generator, device=y.device, dtype=y.dtype)
        sigma = torch.exp(p_mean + p_std * n)
    elif noise == "beta":
        t = sample_beta33(b, generator=generator, device=y.device, dtype=y.dtype)
        sigma = schedule.sigma(t).to(y.dtype)
    else:
        raise ValueError(f"noise: must be one of {NOISE}, got {noise!r}")
    z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    a = observed.to(y.dtype)
    a_tilde = further_corrupt(a, delta, generator) if a_tilde is None else a * a_tilde.to(y.dtype)
    x_t = y + expand_as_batch(sigma, y) * z                    # = A x_t on the observed entries
    inp = torch.where(a_tilde.expand_as(y) > 0, x_t, torch.zeros((), dtype=y.dtype, device=y.device))  # A~ x_t
    err = torch.where(full, denoiser(inp, a_tilde, sigma) - y, torch.zeros((), dtype=y.dtype, device=y.device))
    count = full.reshape(b, -1).sum(1).clamp_min(1).to(y.dtype)
    lam = torch.where(a_tilde.expand_as(y) > 0, expand_as_batch(1 / sigma**2 + 1, y), torch.ones((), dtype=y.dtype,
                      device=y.device))
    return ((lam * err.square()).reshape(b, -1).sum(1) / count).mean()


# -- training -------------------------------------------------------------------------------------

def further_masks(masks: Tensor, delta: float, seed: int) -> Tensor:
    """A~ = B A for every image, B drawn once from a numpy stream seeded by ``seed`` (image i gets the
    i-th draw): the reference fixes each image's masks by seeding with its index (``dataset.py``), so
    an image is seen through the same A~ at every training step and DAG iteration."""
    keep = np.random.default_rng(seed).random(tuple(masks.shape)) >= float(delta)
    return masks * torch.as_tensor(keep, dtype=masks.dtype, device=masks.device)


def train_ambient(net: torch.nn.Module, y: Tensor, masks: Tensor, schedule: Schedule, mstep: dict[str, Any],
                  delta: float, generator: torch.Generator, resume_path: str | Path | None = None,
                  context: str = "ambient M-step", precision: Precision | None = None,
                  further: Tensor | None = None, noise: str = "beta", p_mean: float = -1.2, p_std: float = 1.2,
                  start_state: dict[str, Any] | None = None, until: int | None = None) -> dict[str, Any]:
    """Train the conditional denoiser ``net`` in place on observations ``y`` with masks ``masks``
    (N, C_mask, *spatial): :func:`emprior.training.mstep.train_denoiser` (the experiment's optimiser,
    lr schedule, EMA, clipping, step budget, resume state and ``precision``) with :func:`ambient_loss`. An observation
    and its mask travel as one tensor, so an augmentation flips or crops both the same way.

    ``further`` (like ``masks``): fixed further-corrupted masks A~ per image (:func:`further_masks`),
    carried with the image through augmentation; None draws B at every step. ``noise``, ``p_mean``,
    ``p_std``: :func:`ambient_loss`. ``start_state`` / ``until``: continue one training run across calls
    (:func:`~emprior.training.mstep.train_denoiser`).

    Returns {"loss" (per-chunk means), "steps", "ema", "seconds", "resumed_from", "state"}."""
    from emprior.training.mstep import train_denoiser

    c, m = y.shape[1], masks.shape[1]

    def loss_fn(denoiser, both, schedule, gen, step):
        fixed = both[:, c + m:] if further is not None else None
        return ambient_loss(denoiser, both[:, :c], both[:, c:c + m], schedule, delta, generator=gen, a_tilde=fixed,
                            noise=noise, p_mean=p_mean, p_std=p_std)

    parts = [y, masks] if further is None else [y, masks, further]
    return train_denoiser(net, torch.cat(parts, dim=1), schedule, mstep, generator, resume_path=resume_path,
                          context=context, loss_fn=loss_fn, precision=precision, start_state=start_state,
                          until=until)


# -- network --------------------------------------------------------------------------------------

class AmbientDenoiser(ConditionalDenoiser):
    """d(A~ x_t, A~, sigma) = A~ (x_t/(sigma^2 + 1) + c_out h) + (1 - A~) h with h = h([c_in x_t, A~], sigma):
    the EDM preconditioning per pixel, a hidden pixel counting as noise level infinity (the module
    docstring). ``x_t`` is the masked noisy image A~ x_t, ``cond`` the mask A~ (channels broadcast)."""

    def forward(self, x_t: Tensor, cond: Tensor, sigma: Tensor | float) -> Tensor:
        if cond.shape[0] != x_t.shape[0] or cond.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"cond: shape {tuple(cond.shape)} does not match x_t {tuple(x_t.shape)} "
                             "(same batch and spatial sizes)")
        sigma = batch_sigma(sigma, x_t)
        s = expand_as_batch(sigma, x_t)
        shown = cond.to(x_t.dtype).expand_as(x_t)
        x_t = x_t * shown
        h = self.net(torch.cat([x_t / torch.sqrt(s**2 + 1), cond.to(x_t.dtype)], dim=1), sigma)[:, :self.channels]
        return shown * (x_t / (s**2 + 1) + s / torch.sqrt(s**2 + 1) * h) + (1 - shown) * h


def build_ambient_denoiser(net_cfg: dict[str, Any], x_shape: tuple[int, ...], cond_channels: int) -> AmbientDenoiser:
    """:class:`AmbientDenoiser` around the registered architecture ``net_cfg`` (state dict keys ``net.*``,
    those of :func:`~emprior.nets.conditional.build_conditional_denoiser`)."""
    from emprior.nets.conditional import build_conditional_denoiser

    base = build_conditional_denoiser(net_cfg, x_shape, cond_channels)
    return AmbientDenoiser(base.net, base.channels)


# -- sampling -------------------------------------------------------------------------------------

def draw_training_masks(corruption: dict[str, Any], n: int, x_shape: tuple[int, ...], rng: np.random.Generator
                        ) -> np.ndarray:
    """n masks A~ = B A from the training corruption distribution: A from the observation operator's
    draw (``corruption["operator"]`` with its ``options``), then every observed entry hidden with
    probability ``corruption["delta"]``. Returns float32 (n, C_mask, *spatial)."""
    from emprior.operators import make_operator

    op = make_operator(corruption["operator"], n, x_shape, 0.0, rng, **dict(corruption.get("options") or {}))
    a = op.measured(torch.zeros((1, *x_shape)))
    a = a.expand(n, *a.shape[1:]).numpy().astype(np.float32)
    keep = rng.random(a.shape) >= float(corruption["delta"])
    return a * keep.astype(np.float32)


class AmbientSamplingDenoiser:
    """d(x_t, sigma) = h(A~ x_t, A~, sigma), the Ambient network used as the prior's denoiser E[x | x_t].

    ``mode`` (see :data:`SAMPLING_MASKS`): ``fixed`` draws one mask per sample at the first call and
    keeps it; ``resample`` draws fresh masks at every call; ``full`` uses A~ = I. Masks come from
    ``rng`` (numpy), so they are the same on every device."""

    def __init__(self, module: torch.nn.Module, corruption: dict[str, Any], x_shape: tuple[int, ...],
                 cond_channels: int, mode: str, rng: np.random.Generator, clip: float = 0.0):
        if mode not in SAMPLING_MASKS:
            raise ValueError(f"sampling_mask: must be one of {SAMPLING_MASKS}, got {mode!r}")
        self.module, self.corruption, self.x_shape = module, corruption, tuple(x_shape)
        self.cond_channels, self.mode, self.rng = int(cond_channels), mode, rng
        self._fixed: Tensor | None = None
        self.clip = float(clip)  # > 0: the output clipped to [-clip, clip] (reference: eval.py tensor_clipping)

    def mask(self, x_t: Tensor) -> Tensor:
        n = x_t.shape[0]
        if self.mode == "full":
            return torch.ones((n, self.cond_channels, *x_t.shape[2:]), dtype=x_t.dtype, device=x_t.device)
        if self.mode == "fixed" and self._fixed is not None and self._fixed.shape[0] == n:
            return self._fixed
        m = torch.as_tensor(draw_training_masks(self.corruption, n, self.x_shape, self.rng)).to(x_t.device, x_t.dtype)
        if self.mode == "fixed":
            self._fixed = m
        return m

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        m = self.mask(x_t)
        inp = x_t * m.expand_as(x_t)
        out = self.module(inp, m, sigma)
        return out.clamp(-self.clip, self.clip) if self.clip > 0 else out


def _to_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts / lists of tensors and numbers: optimiser, scheduler, EMA states) on the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# -- the method -----------------------------------------------------------------------------------

def _is_mask_operator(kind: str) -> bool:
    """Whether operator ``kind`` measures a subset of the pixels (``_measured`` defined, y shaped like x)."""
    from emprior.operators.base import OPERATORS, LinearOperator

    cls = OPERATORS.get(kind)
    return cls._measured is not LinearOperator._measured and cls._y_shape is LinearOperator._y_shape


@EM_METHODS.register("ambient", AmbientOptions)
class Ambient(EMMethod):
    """AmbientDiffusion: train E[x | A~ x_t, A~] on further-corrupted observations; no q_0, no E-step."""

    stages = ("mstep",)
    label = "AmbientDiffusion"

    def validate(self, where: str) -> None:
        kind = self.exp.get("observation", {}).get("operator")
        if kind is None:
            return
        at = where.split(".variants.")[0] + ".observation.operator" if ".variants." in where \
            else "observation.operator"
        if self.options.sampler not in ("heun", "evaluate"):
            raise ConfigError(f"{where}.sampler: must be 'heun' or 'evaluate', got {self.options.sampler!r}")
        if not _is_mask_operator(kind):
            raise ConfigError(f"{at}: method 'ambient' needs a pixel-mask operator (measured() not None, y shaped "
                              f"like x, e.g. pixel_mask, box_mask), got {kind!r}")

    def mstep(self, job: Job, data: Tensor, previous: Prior | None, obs: Observations | None, resume_path: str
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        from emprior.core.rng import derive_seed
        from emprior.diffusion.schedule import Schedule
        from emprior.methods.stages import cpu_state
        if obs is None:
            raise ArtifactError(f"{job.context}: the ambient M-step needs the observations (their masks)")
        exp = job.exp
        y = torch.as_tensor(data, dtype=torch.float32)
        masks = obs.op.measured(y)
        if masks is None or tuple(obs.op.y_shape) != tuple(obs.x_shape):
            raise ConfigError(f"experiments.{job.experiment}.observation.operator: method 'ambient' needs a "
                              f"pixel-mask operator, got {obs.op.kind!r}")
        masks = masks.expand(len(y), *masks.shape[1:]).to(torch.float32)
        x_shape = tuple(y.shape[1:])
        cond_channels = int(masks.shape[1])
        net_cfg = dict(exp["denoiser"])
        opts = self.options
        mstep_cfg, start_state, until = exp["mstep"], None, None
        if opts.training == "continue":  # one run cut into the DAG iterations; the lr schedule spans them all
            from emprior.training.mstep import n_steps

            chunk = n_steps(exp["mstep"], len(y))
            mstep_cfg = {k: v for k, v in exp["mstep"].items() if k != "epochs"}
            k = int(job.iteration or 1)
            mstep_cfg["steps"] = chunk * max(int(exp.get("iterations", 1)), k)
            until = chunk * k
            if previous is not None:
                saved = previous.checkpoint.get("train_state")
                if saved is None or int(saved.get("step", -1)) != until - chunk:
                    raise ArtifactError(f"{job.context}: previous ambient model has no training state at step "
                                        f"{until - chunk} (written with training: restart or by an older "
                                        "version); rerun its M-step")
                # the EMA's shadow is the model's own weights (the EMA was copied into them)
                ema = {} if saved.get("ema_decay") is None else \
                    {"decay": float(saved["ema_decay"]), "shadow": previous.checkpoint["weights"]}
                start_state = {**saved, "ema": ema}
        further = None
        if opts.further_mask == "fixed":  # not seeded by the iteration: the same A~ in every iteration
            further = further_masks(masks, float(opts.delta),
                                    derive_seed(job.seed, job.experiment, job.variant, "further_masks"))
        torch.manual_seed(derive_seed(job.seed, job.experiment, job.variant, "net_init"))
        net = build_ambient_denoiser(net_cfg, x_shape, cond_channels).to(job.device)
        if previous is not None:
            if previous.kind != "ambient":
                raise ArtifactError(f"previous model: expected an ambient checkpoint, got {previous.kind!r}")
            net.load_state_dict(previous.checkpoint["raw_weights"])
        gen = job.generator("mstep")
        result = train_ambient(net, y.to(job.device), masks.to(job.device), Schedule(**exp["schedule"]),
                               mstep_cfg, float(opts.delta), gen, resume_path=resume_path,
                               context=f"ambient M-step {job.context}", precision=job.precision,
                               further=None if further is None else further.to(job.device), noise=opts.noise,
                               p_mean=float(opts.p_mean), p_std=float(opts.p_std), start_state=start_state,
                               until=until)
        raw = {k: v.clone() for k, v in net.state_dict().items()}
        if result["ema"] is not None:
            result["ema"].copy_to(net)
        obs_cfg = exp["observation"]
        ckpt = {"kind": "ambient", "method": "ambient", "x_shape": list(x_shape), "net": net_cfg,
                "schedule": dict(exp["schedule"]), "cond_channels": cond_channels,
                "corruption": {"operator": obs_cfg["operator"], "options": dict(obs_cfg.get("options") or {}),
                               "delta": float(self.options.delta)},
                "weights": cpu_state(net.state_dict()), "raw_weights": cpu_state(raw),
                "train": {"loss": result["loss"], "steps": result["steps"], "dropped": 0, "n_data": len(y)}}
        if opts.training == "continue":  # optimiser, lr schedule, step; the EMA shadow is "weights"
            state = result["state"]
            ckpt["train_state"] = {"optimizer": _to_cpu(state["optimizer"]), "scheduler": state["scheduler"],
                                   "step": int(state["step"]),
                                   "ema_decay": state["ema"].get("decay") if state["ema"] else None}
        return ckpt, {"seconds": result["seconds"], "resumed_from": result["resumed_from"]}

    @classmethod
    def build_networks(cls, ckpt: dict[str, Any], where: str) -> torch.nn.Module:
        """The :class:`AmbientDenoiser` of an ambient model.pt (asked by the checkpoint loader)."""
        try:
            return build_ambient_denoiser(dict(ckpt["net"]), tuple(int(k) for k in ckpt["x_shape"]),
                                          int(ckpt["cond_channels"]))
        except KeyError as exc:
            raise ArtifactError(f"{where}: ambient model lacks key {exc.args[0]!r}") from None

    def checkpoint_networks(self, x_shape, op):
        # one mask channel per channel of the operator's measured() mask, as the M-step builds it
        mask = op.measured(torch.zeros(1, *op.y_shape))
        nets = [build_ambient_denoiser(dict(self.exp["denoiser"]), x_shape, int(mask.shape[1]))]
        # training: continue also stores Adam's two moments (train_state): the size of the weights twice
        return nets * 2 if self.options.training == "continue" else nets

    def sample_prior(self, job: Job, prior: Prior, n: int, generator: torch.Generator,
                     x_T: Tensor | None = None) -> Tensor:
        from emprior.diffusion.samplers import sample, sample_prior
        from emprior.diffusion.schedule import Schedule

        if prior.kind != "ambient":
            raise ArtifactError(f"{job.context}: expected an ambient checkpoint, got {prior.kind!r}")
        ckpt = prior.checkpoint
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        o = self.options
        den = AmbientSamplingDenoiser(prior.run(prior.module), ckpt["corruption"], prior.x_shape, ckpt["cond_channels"],
                                      o.sampling_mask, np.random.default_rng(seed), clip=float(o.clip))
        p = next(prior.module.parameters())
        ev = self.exp["evaluate"]
        if o.sampler == "heun":  # EDM's num_steps levels: num_steps - 1 Heun steps, then the Euler step to 0
            name, steps, opts = "heun", int(o.sampler_steps) - 1, {"rho": float(o.rho)}
        else:
            name, steps = ev["sampler"], ev["steps"]
            opts = {"corrections": ev.get("corrections", 0), "tau": ev.get("tau", 0.1), "eta": ev.get("eta", 1.0)}
        if x_T is not None:  # the given initial noise (EMMethod.sample_prior); the masks still come from generator
            return sample(den, x_T.to(device=p.device, dtype=p.dtype), Schedule(**self.exp["schedule"]),
                          steps, name, generator=generator, **opts)
        return sample_prior(den, n, prior.x_shape, Schedule(**self.exp["schedule"]), steps, name,
                            generator, device=p.device, dtype=p.dtype, **opts)
