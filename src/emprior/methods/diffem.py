"""DiffEM (2025): expectation-maximization with a *conditional* diffusion model of x given y.

Instead of a prior q_k(x) plugged into a posterior sampler, DiffEM learns the posterior itself: a
conditional denoiser d_cond(x_t, y, sigma) ~ E[x | x_t, y] whose reverse diffusion samples
q_k(x | y). The EM recursion is

- q_0: a Gaussian fitted by EM to the observations (DiEM's Sec. 4.1, :func:`~.stages.gaussian_init`);
- E-step of iteration 1: x ~ q_0(x | y) with MMPS on the Gaussian q_0 (``first_posterior``, the
  official "lap 0": DDPM, CG 1), exactly as DiEM's first E-step;
- E-step of iteration k >= 2: x ~ q_{k-1}(x | y) by the experiment's diffusion sampler on
  :class:`ConditionalPosterior`, whose estimate of E[x | x_t, y] is d_cond(x_t, A^T y, sigma) -- the
  network's own answer, no likelihood guidance. The condition is y in image space, A^T y (for pixel
  masks: y with the deleted pixels zero; the mask itself is not an input), concatenated to x_t
  channel-wise (:mod:`emprior.nets.conditional`; 3 + 3 = 6 input channels on CIFAR-10);
- M-step of iteration k: (a) d_cond trained by DSM on pairs (x, y') where x runs over the E-step's
  posterior samples and y' = A' x + e is a *fresh* corruption from the experiment's observation model
  (operator kind, options and noise_std of ``observation``), drawn once per sample for the whole
  M-step as the reference does (``recorrupt: lap``; ``step``: a new A' for every pair at every
  training step, :func:`recorrupt`); from iteration 2 on it continues from the previous conditional
  model's EMA weights (``conditional_warm_start: ema``, the reference's checkpoint holds them) with a
  new optimizer and EMA (decay 0.9999 by default, the reference's). (b) An unconditional denoiser
  d_theta trained by DSM on the same samples (:func:`~.stages.denoiser_mstep`), warm-started: not in
  the reference, it gives every iteration a prior q_k whose samples and metrics Fig. 4 draws.
- Final stage (``final_model``, the reference's train_uncond.py, ``rules/diffem.smk``): the last
  conditional model draws the reconstructions of all observations once more (``<variant>/final/
  posterior.h5``), and a *fresh* unconditional model (the ``net_init`` weights) is trained on them
  (``final/model.pt``, :meth:`DiffEM.final_model`; ``final_mstep``, ``final_steps``), then sampled
  and scored (``final/metrics.json``): the model DiffEM's paper evaluates, and Table 1's row.

Mapping to :class:`~.base.EMMethod`: stages ``init``, ``estep``, ``mstep``; :meth:`DiffEM.posterior`
is MMPS while ``prior.kind == "gaussian"`` and the conditional sampler afterwards; ``uses_previous(k)``
is k >= 2 (both nets continue); ``final_stage`` is the option ``final_model``. model.pt is an ordinary
``kind="denoiser"`` checkpoint of d_theta (load_prior, prior samples and metrics unchanged) with one
more key, ``"conditional"``: the conditional net's config, ``x_shape``, ``cond_channels``, ``weights``
(EMA: where the next M-step continues by default), ``raw_weights`` and its ``train`` record, all
plain tensors / numbers (``torch.load(weights_only=True)``).

Randomness: the conditional net's initialisation ``net_init_conditional`` (per variant), its training
noise and batches ``mstep_conditional`` (per iteration), the operators of the fresh corruptions one numpy
stream per M-step (``mstep_conditional / corruption``; ``recorrupt: step``: one per training step,
``mstep_conditional / corruption / step``), so a resumed run (the conditional
training is resumable like :func:`~emprior.training.mstep.train_denoiser`, from its own resume file)
draws the same masks. Budget: both nets with the experiment's ``mstep`` settings; ``conditional_mstep``
(default: the reference's EMA 0.9999) and ``conditional_steps`` override them for the conditional net
only, ``final_mstep`` and ``final_steps`` for the final model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from emprior.core.errors import ArtifactError, ConfigError
from emprior.core.log import get_logger
from emprior.core.registry import option
from emprior.core.rng import derive_seed, numpy_rng, torch_generator
from emprior.methods.base import EM_METHODS, EMMethod
from emprior.methods.stages import cpu_state, denoiser_mstep, gaussian_init
from emprior.posterior.base import PosteriorDenoiser, col

if TYPE_CHECKING:
    from emprior.core.job import Job
    from emprior.nets.conditional import ConditionalDenoiser
    from emprior.priors.checkpoint import Prior

log = get_logger("emprior.methods.diffem")

STREAM = "mstep_conditional"


@dataclass(frozen=True)
class DiffEMOptions:
    first_posterior: dict = option({"method": "mmps", "covariance": "tweedie", "solver": "cg", "maxiter": 1},
                                   doc="posterior sampler of iteration 1's E-step on the Gaussian q_0: "
                                       "{method: NAME, **its options}")
    conditional_steps: int | None = option(None, minimum=1,
                                           doc="training steps of the conditional model per M-step "
                                               "(default: the experiment's mstep budget)")
    conditional_mstep: dict = option({"ema_decay": 0.9999},
                                     doc="overrides of the experiment's mstep settings for the conditional "
                                         "model only (reference: EMA 0.9999, conf/train.yaml)")
    conditional_net: dict | None = option(None, doc="net config of the conditional model "
                                                    "(default: the experiment's denoiser)")
    conditional_warm_start: str = option("ema", enum=["ema", "raw"],
                                         doc="weights the conditional model of iteration k >= 2 continues from: "
                                             "the previous EMA weights (reference) or the raw ones")
    recorrupt: str = option("lap", enum=["lap", "step"],
                            doc="fresh corruption of the M-step's samples once per M-step, one per sample "
                                "(reference) or a new one for every pair at every training step")
    unconditional_warm_start: bool = option(True, doc="the per-iteration unconditional model continues from the "
                                                      "previous iteration's weights (false: trained afresh on "
                                                      "each iteration's reconstructions)")
    final_model: bool = option(True, doc="DiffEM's final stage (reference): regenerate the reconstructions with "
                                         "the last conditional model and train a fresh unconditional model on "
                                         "them (<variant>/final/); Table 1 evaluates it")
    final_mstep: dict = option({"ema_decay": 0.9999},
                               doc="overrides of the experiment's mstep settings for the final unconditional "
                                   "model (reference: the conditional run's settings, EMA 0.9999)")
    final_steps: int | None = option(None, minimum=1,
                                     doc="training steps of the final unconditional model (default: the "
                                         "experiment's mstep budget)")


def merged_mstep(mstep: dict[str, Any], over: dict[str, Any], steps: int | None) -> dict[str, Any]:
    """The experiment's mstep settings with ``over`` applied and, if given, ``steps`` (replacing epochs)."""
    cfg = dict(mstep)
    if "steps" in over or steps is not None:
        cfg.pop("epochs", None)
    cfg.update(over)
    if steps is not None:
        cfg["steps"] = int(steps)
    return cfg


def recorrupt(x: Tensor, obs_cfg: dict[str, Any], rng: np.random.Generator,
              generator: torch.Generator | None = None) -> tuple[Any, Tensor]:
    """A fresh corruption of every row of ``x`` from the observation model ``obs_cfg`` (operator kind,
    options, noise_std): new operator parameters per row from ``rng``, y' = A' x + e with e from
    ``generator``. Returns (A', y')."""
    from emprior.operators import make_operator

    op = make_operator(obs_cfg["operator"], len(x), tuple(x.shape[1:]), float(obs_cfg["noise_std"]), rng,
                       **obs_cfg.get("options", {}))
    return op, op.observe(x, generator=generator)


def condition(op: Any, y: Tensor) -> Tensor:
    """The conditional net's input for y: A^T y in the shape of x (pixel masks: y, zero where deleted)."""
    return op.At(y)


class ConditionalPosterior(PosteriorDenoiser):
    """E[x | x_t, y] ~ d_cond(x_t, A^T y, sigma): the conditional model, no likelihood guidance.

    ``denoiser`` (the unconditional prior's) only stands in for a sample whose conditional estimate is
    non-finite (counted in ``fallbacks``)."""

    def __init__(self, conditional: ConditionalDenoiser, denoiser: Any, op: Any, y: Tensor):
        super().__init__(denoiser, op, y)
        self.conditional = conditional

    def _estimate(self, x_t: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.conditional(x_t, condition(self.op, y), sigma)
            ok = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
            if not bool(ok.all()):
                self.stats["fallbacks"] += int((~ok).sum())
                out = torch.where(col(ok, out), out, self.denoiser(x_t, sigma))
        return out.detach()


def conditional_from_checkpoint(part: dict[str, Any], device: torch.device | str | None = None,
                                where: str = "checkpoint") -> ConditionalDenoiser:
    """The conditional denoiser of a DiffEM checkpoint's ``"conditional"`` entry (its EMA weights)."""
    from emprior.nets.conditional import build_conditional_denoiser
    from emprior.priors.checkpoint import load_module

    with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: leave the global stream alone
        net = build_conditional_denoiser(dict(part["net"]), part["x_shape"], int(part["cond_channels"]))
    load_module(net, part["weights"], f"{where} (conditional)", device)
    return net


@EM_METHODS.register("diffem", DiffEMOptions)
class DiffEM(EMMethod):
    """DiffEM: Gaussian q_0 with MMPS, then E-steps with a conditional diffusion model of x given y."""

    stages = ("init", "estep", "mstep")
    estep_check = True  # iteration 1 is MMPS on the Gaussian q_0
    label = "DiffEM"

    def __init__(self, options: DiffEMOptions, exp: dict[str, Any]):
        super().__init__(options, exp)
        first = dict(options.first_posterior)
        self.sampler = first.get("method", "mmps")
        self.sampler_options = {k: v for k, v in first.items() if k != "method"}
        self._cache: tuple[dict[str, Any], Any, ConditionalDenoiser] | None = None

    def validate(self, where: str) -> None:
        from emprior.nets.build import NETS
        from emprior.posterior import POSTERIOR_SAMPLERS

        POSTERIOR_SAMPLERS.options(self.sampler, self.sampler_options, where=f"{where}.first_posterior")
        for key in ("conditional_mstep", "final_mstep"):
            self._validate_mstep(getattr(self.options, key), f"{where}.{key}")
        net = self.options.conditional_net
        if net is not None:
            NETS.options(net.get(NETS.key), net, where=f"{where}.conditional_net")

    def _validate_mstep(self, over: dict[str, Any], where: str) -> None:
        if not over or "mstep" not in self.exp:  # no mstep: the experiment's own validation says so
            return
        import jsonschema

        from emprior.config.loading import load_schema

        full = load_schema()
        schema = {**full["$defs"]["experiment"]["properties"]["mstep"], "$defs": full["$defs"]}
        merged = merged_mstep(self.exp.get("mstep", {}), dict(over), None)
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(merged))
        if err is not None:
            path = ".".join(str(q) for q in err.absolute_path)
            raise ConfigError(f"{where}{'.' + path if path else ''}: {err.message}")

    @property
    def final_stage(self) -> bool:
        return bool(self.options.final_model)

    def init_prior(self, job, obs, clean=None):
        return gaussian_init(job, obs)

    # -- E-step ----------------------------------------------------------------------------------
    def conditional(self, prior: Prior, device: torch.device | str | None = None) -> ConditionalDenoiser:
        """The conditional denoiser of ``prior``'s checkpoint as the job's precision runs it
        (:meth:`~emprior.priors.checkpoint.Prior.run`), built once per prior (and device)."""
        part = prior.checkpoint.get("conditional")
        if part is None:
            raise ArtifactError("DiffEM E-step: the previous model.pt has no 'conditional' entry (not a DiffEM "
                                "M-step's checkpoint)")
        key = torch.device(device) if device is not None else None
        if self._cache is None or self._cache[0] is not prior.checkpoint or self._cache[1] != key:
            self._cache = (prior.checkpoint, key, prior.run(conditional_from_checkpoint(part, device)))
        return self._cache[2]

    def posterior(self, prior, op, y):
        if prior.kind == "gaussian":
            from emprior.posterior import make_posterior

            opts = dict(self.sampler_options)
            if opts.get("covariance") == "prior":
                opts["prior"] = prior.gaussian
            return make_posterior(self.sampler, prior.denoiser, op, y, **opts)
        return ConditionalPosterior(self.conditional(prior, y.device), prior.denoiser, op, y)

    # -- M-step ----------------------------------------------------------------------------------
    def uses_previous(self, iteration: int) -> bool:
        return iteration >= 2

    def conditional_config(self) -> dict[str, Any]:
        return dict(self.options.conditional_net or self.exp["denoiser"])

    def conditional_mstep(self, job: Job, x: Tensor, previous: Prior | None, resume_path: str | None
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train d_cond by DSM on (x, fresh corruption of x) pairs; the checkpoint's ``"conditional"``.

        Iteration k >= 2 continues from the previous conditional weights (EMA by default, as the
        reference's lap k loads checkpoint_{k-1}, which holds the EMA weights), with a new optimizer
        and an EMA restarted from those weights (train_conditional.py:143,233-234,269-273)."""
        from emprior.diffusion.loss import dsm_loss
        from emprior.diffusion.schedule import Schedule
        from emprior.nets.conditional import build_conditional_denoiser
        from emprior.training.mstep import em_mstep

        exp, opts = self.exp, self.options
        x_shape = tuple(x.shape[1:])
        channels = cond_channels = int(x_shape[0])
        net_cfg = self.conditional_config()
        torch.manual_seed(derive_seed(job.seed, job.experiment, job.variant, "net_init_conditional"))
        net = build_conditional_denoiser(net_cfg, x_shape, cond_channels).to(job.device)
        prev = previous.checkpoint.get("conditional") if previous is not None else None
        warm = None
        if prev is not None:
            warm = "weights" if opts.conditional_warm_start == "ema" else "raw_weights"
            net.load_state_dict(prev[warm])
        elif previous is not None:
            log.info("%s: previous model has no conditional weights; the conditional model starts afresh", job.context)
        mstep_cfg = merged_mstep(exp["mstep"], dict(opts.conditional_mstep), opts.conditional_steps)
        obs_cfg = dict(exp["observation"])
        seed, stream = job.seed, job.stream(STREAM, "corruption")

        if opts.recorrupt == "lap":
            # one corruption per sample for the whole M-step (train_conditional.py:310): the pairs are
            # the data, x and A'^T y' side by side in the channels
            op, y = recorrupt(x, obs_cfg, numpy_rng(seed, *stream), torch_generator(seed, *stream))
            data = torch.cat([x, condition(op, y)], dim=1)

            def loss_fn(model, xb, schedule, generator, step):
                xs, c = xb[:, :channels], xb[:, channels:]
                return dsm_loss(lambda x_t, sigma: model(x_t, c, sigma), xs, schedule, generator=generator)
        else:
            data = x

            def loss_fn(model, xb, schedule, generator, step):
                op, y = recorrupt(xb, obs_cfg, numpy_rng(seed, *stream, step), generator)
                c = condition(op, y)
                return dsm_loss(lambda x_t, sigma: model(x_t, c, sigma), xb, schedule, generator=generator)

        result = em_mstep(net, data.to(job.device), Schedule(**exp["schedule"]), mstep_cfg, job.generator(STREAM),
                          f"M-step (conditional) {job.context}", resume_path=resume_path, loss_fn=loss_fn,
                          precision=job.precision)
        corruption = ("one fresh operator per sample for the M-step" if opts.recorrupt == "lap"
                      else "fresh operator per pair and training step")
        part = {"net": net_cfg, "x_shape": list(x_shape), "cond_channels": cond_channels,
                "weights": cpu_state(net.state_dict()), "raw_weights": cpu_state(result["raw"]),
                "observation": obs_cfg,
                "train": {"loss": result["loss"], "steps": result["steps"], "dropped": result["dropped"],
                          "n_data": result["n_data"], "corruption": corruption,
                          "warm_start": warm or "none", "ema_decay": mstep_cfg.get("ema_decay")}}
        return part, {"seconds": result["seconds"], "resumed_from": result["resumed_from"]}

    def mstep(self, job, data, previous, obs, resume_path):
        start = time.perf_counter()
        cond_resume = f"{resume_path}.conditional.pt" if resume_path else None
        part, cond_rt = self.conditional_mstep(job, data, previous, cond_resume)
        warm = previous if self.options.unconditional_warm_start else None
        ckpt, rt = denoiser_mstep(job, data, warm, resume_path)
        ckpt["conditional"] = part
        if cond_resume:
            for f in (cond_resume, cond_resume + ".prov.json"):
                Path(f).unlink(missing_ok=True)
        runtime = {**rt, "conditional_seconds": cond_rt["seconds"],
                   "conditional_resumed_from": cond_rt["resumed_from"], "total_seconds": time.perf_counter() - start}
        return ckpt, runtime

    # -- final stage ----------------------------------------------------------------------------
    def final_model(self, job: Job, data: Tensor, source: dict[str, Any], resume_path: str
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """DiffEM's final model (train_unconditional.py:65-101): a *fresh* unconditional denoiser (the
        ``net_init`` weights, no previous model) trained by DSM on ``data``, the reconstructions that the
        last conditional model drew for the observations; ``source`` (paths and checksums of those samples
        and of the model that drew them) is recorded in the checkpoint's ``train.source``."""
        cfg = merged_mstep(self.exp["mstep"], dict(self.options.final_mstep), self.options.final_steps)
        ckpt, rt = denoiser_mstep(job, data, None, resume_path, mstep_cfg=cfg)
        ckpt["train"] = {**ckpt["train"], "stage": "final", "fresh": True, "source": dict(source),
                         "ema_decay": cfg.get("ema_decay")}
        return ckpt, rt

    def checkpoint_networks(self, x_shape, op):
        from emprior.nets.conditional import build_conditional_denoiser

        conditional = build_conditional_denoiser(self.conditional_config(), x_shape, int(x_shape[0]))
        return [*super().checkpoint_networks(x_shape, op), conditional]

    # -- report ----------------------------------------------------------------------------------
    def table_covariance(self):
        return None

    def clean_data(self):
        return 0
