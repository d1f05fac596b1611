"""EMDiffusion (Bai, Wang, Chen & Sun 2024, "An Expectation-Maximization Algorithm for Training Clean
Diffusion Models from Corrupted Observations") as an EM-method plug-in, run as its official code runs it
(weiminbai/EMDiffusion @ 4f56e4620fb77bb36455c323399846783f65a7f6; docs/peers.md, "EMDiffusion
fidelity", lists every component with file:line and each departure).

- q_0: a diffusion model trained on a *small clean subset*: the paper's 50 of CIFAR-10's 50 000
  images (0.1 %; its ablation, Fig. 5a, 10 to 500: 0.02 % to 1 %). Here ``clean_fraction`` of the
  clean data (default 0.001; ``clean_subset`` gives a count instead), drawn without replacement from
  the stream ``(seed, experiment, variant, "clean_subset")``, trained by DSM for ``init_steps``
  (default: the experiment's ``mstep`` budget). The positions are stored in iter_000/model.pt as
  ``ckpt["clean_subset"]``; Table 1 counts them (:meth:`EMDiffusion.clean_data`).
- E-step: DPS as the reference's ``sample_condition.py`` runs it (:class:`~emprior.posterior.dps_vp.DPSVP`):
  the DDPM chain of 1000 linear-beta VP steps (``steps``, timestep_respacing) walked by the suite's
  DDPM sampler on the chain's VE levels (:meth:`EMDiffusion.estep_chain`), a constant DPS step
  ``scale`` per VP step translated exactly at every level, the residual norm over batches of
  ``batch`` = 250 samples (e-step.sh's --batch_size), x_hat clipped to the data range (clip_denoised).
  ``guidance`` is the scale per EM stage: iteration k uses ``guidance[min(k, len) - 1]``
  (:meth:`EMDiffusion.guidance_at`). Default [20, 10, 7]: 20 is the scale of the config e-step.sh
  runs (configs_ddpm/inpainting_128.yaml:4), 10 and 7 those of the repository's other CIFAR-10
  inpainting configs (ablation.yaml:4, inpainting_cifar.yaml:4); the paper (Fig. 5c) finds the best
  scale falls as EM proceeds but its code sets one scale per run, so the order by stage is our reading.
- The batch norm couples the samples of a batch. Batches are groups of ``batch`` consecutive
  observations within an E-step block (``estep.block_size``); blocks are fixed whatever the shard
  count, so shards do not change samples. A block smaller than ``batch`` is one batch.
- M-step: DSM on the reconstructions as the reference stores them (``reconstructions="png"``:
  ``plt.imsave(clear_color(x))``, sample_condition.py:179 and util/img_utils.py:45-57, i.e. each
  image min-max scaled to the full range and rounded down to 8 bits, read back by
  cifar_dataset.py:48-57 and mapped to [-1, 1], denoiser_diffusion.py:124-128), continuing from the
  previous *EMA* weights (denoiser_diffusion.py:163 loads the model file the previous run saved,
  which is its EMA model, line 241), with a fresh optimizer and EMA, as ``continue_from="ema"``.
- ``estep_fraction`` < 1 samples the posterior of a seeded random subset of the observations at each
  iteration (:meth:`EMDiffusion.estep_subset`; the reference samples slices of 2500, sample_condition.py:131).

How the stage reaches the posterior: :meth:`EMMethod.posterior` receives no job, so the E-step's
iteration is taken from :meth:`estep_subset`, which the pipeline calls with the job before it builds
any posterior. A posterior asked for before any ``estep_subset`` call is an error. The scale used
goes into the posterior's ``stats`` (``"scale"``) and so into each shard's ``solver`` attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from emprior.core.errors import ConfigError
from emprior.core.log import get_logger
from emprior.core.registry import option
from emprior.core.rng import numpy_rng
from emprior.methods.base import EM_METHODS, EMMethod
from emprior.methods.stages import denoiser_mstep

log = get_logger("emprior.methods.emdiffusion")

# the reference's DPS scale per EM stage (see the module docstring)
DEFAULT_GUIDANCE = [20.0, 10.0, 7.0]
RECONSTRUCTIONS = ("png", "clip", "raw")


def stored_reconstructions(x, how: str = "png", data_scale: float = 2.0):
    """The E-step samples as the M-step reads them. ``"png"`` (reference): each image min-max scaled to
    [0, 1] (util/img_utils.py:53-57), rounded down to 8 bits (matplotlib's imsave), mapped back to
    [-d, d]; a constant image (NaN in the reference) becomes mid-range. ``"clip"``: clamped to [-d, d].
    ``"raw"``: unchanged."""
    import torch

    if how == "raw":
        return x
    if how == "clip":
        return x.clamp(-data_scale, data_scale)
    if how != "png":
        raise ValueError(f"reconstructions: must be one of {RECONSTRUCTIONS}, got {how!r}")
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    v = torch.where(span > 0, (flat - lo) / safe, torch.full_like(flat, 0.5))
    q = torch.floor(v * 255.0) / 255.0
    return (data_scale * (2.0 * q - 1.0)).reshape(x.shape)


@dataclass(frozen=True)
class EMDiffusionOptions:
    clean_fraction: float = option(0.001, exclusiveMinimum=0, maximum=1,
                                   doc="fraction of the clean data q_0 is trained on (paper: 50 of 50 000)")
    clean_subset: int | None = option(None, minimum=1, doc="clean images q_0 is trained on (overrides clean_fraction)")
    init_steps: int | None = option(None, minimum=1,
                                    doc="DSM steps of q_0 on the clean subset (default: the experiment's mstep budget)")
    guidance: list[float] = option(list(DEFAULT_GUIDANCE),
                                   doc="DPS scale per VP step per EM stage: iteration k uses guidance[min(k, len) - 1]")
    steps: int = option(1000, minimum=2, doc="E-step DDPM evaluations (the reference's 1000-step chain, respaced)")
    guidance_per: Literal["step", "vp_step"] = option(
        "step", doc="scale per evaluated step (reference) or per step of the 1000-step chain it spans")
    norm: Literal["batch", "sample"] = option("batch", doc="DPS residual norm over a batch (reference) or per sample")
    batch: int | None = option(250, minimum=1, doc="observations sharing one residual norm (e-step.sh: 250)")
    clip: bool = option(True, doc="clamp x_hat to the data range in the E-step (clip_denoised)")
    data_scale: float = option(2.0, exclusiveMinimum=0, doc="data range [-d, d] over the reference's [-1, 1]")
    reconstructions: Literal["png", "clip", "raw"] = option(
        "png", doc="how the M-step reads the E-step samples: per-image min-max 8-bit (reference), clamped, raw")
    continue_from: Literal["ema", "raw"] = option("ema", doc="weights each M-step starts from (reference: EMA)")
    estep_fraction: float = option(1.0, exclusiveMinimum=0, maximum=1,
                                   doc="fraction of the observations each E-step samples (seeded, new per iteration)")


@EM_METHODS.register("emdiffusion", EMDiffusionOptions)
class EMDiffusion(EMMethod):
    """EMDiffusion (Bai et al. 2024): q_0 from a small clean subset, the reference's DPS E-step, DSM M-step."""

    stages = ("init", "estep", "mstep")
    init_needs_clean = True
    label = "EMDiffusion"

    def __init__(self, options: EMDiffusionOptions, exp: dict[str, Any]):
        super().__init__(options, exp)
        self.iteration: int | None = None  # the E-step's iteration, set by estep_subset

    def validate(self, where: str) -> None:
        g = self.options.guidance
        key = f"{where}.guidance"
        if not isinstance(g, (list, tuple)) or len(g) == 0:
            raise ConfigError(f"{key}: must be a non-empty list of positive DPS scales, got {g!r}")
        for i, v in enumerate(g):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{key}[{i}]: must be a finite number > 0, got {v!r}")
        f = self.options.estep_fraction
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise ConfigError(f"{where}.estep_fraction: must be in (0, 1], got {f!r}")
        c = self.options.clean_fraction
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ConfigError(f"{where}.clean_fraction: must be in (0, 1], got {c!r}")
        steps = self.options.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= 1000:
            raise ConfigError(f"{where}.steps: must be an integer in [2, 1000] (the 1000-step chain), got {steps!r}")
        for name, allowed in (("norm", ("batch", "sample")), ("guidance_per", ("step", "vp_step")),
                              ("reconstructions", RECONSTRUCTIONS), ("continue_from", ("ema", "raw"))):
            if getattr(self.options, name) not in allowed:
                got = getattr(self.options, name)
                raise ConfigError(f"{where}.{name}: must be one of {list(allowed)}, got {got!r}")
        n = (self.exp.get("dataset") or {}).get("n")
        if self.options.clean_subset is None and not isinstance(n, int):
            raise ConfigError(f"{where}.clean_fraction: the dataset has no n to take a fraction of; "
                              f"give clean_subset (a count) instead")
        if isinstance(n, int) and self.options.clean_subset is not None and self.options.clean_subset > n:
            raise ConfigError(f"{where}.clean_subset: {self.options.clean_subset} exceeds the dataset's n = {n}")

    # -- init: q_0 from a clean subset -----------------------------------------------------------
    def clean_count(self, n_clean: int) -> int:
        """Size of the clean subset for a clean set of ``n_clean``: ``clean_subset``, else
        round(clean_fraction n_clean), at least 1."""
        if self.options.clean_subset is not None:
            return int(self.options.clean_subset)
        return max(1, int(round(float(self.options.clean_fraction) * n_clean)))

    def clean_indices(self, job, n_clean: int) -> np.ndarray:
        """Positions in clean.h5 of the clean subset (sorted, distinct), drawn by the variant's seed."""
        k = self.clean_count(n_clean)
        if k > n_clean:
            raise ConfigError(f"experiments.{job.experiment}.variants.{job.variant}.clean_subset: {k} exceeds "
                              f"the {n_clean} clean images")
        rng = numpy_rng(job.seed, job.experiment, job.variant, "clean_subset")
        return np.sort(rng.choice(n_clean, size=k, replace=False))

    def init_mstep_cfg(self) -> dict[str, Any]:
        cfg = dict(self.exp["mstep"])
        if self.options.init_steps is not None:
            cfg.pop("epochs", None)
            cfg["steps"] = int(self.options.init_steps)
        return cfg

    def init_prior(self, job, obs, clean=None):
        import torch

        if clean is None:
            raise ConfigError(f"{job.context}: EMDiffusion's initial prior needs the clean data (clean.h5)")
        idx = self.clean_indices(job, len(clean))
        x = torch.as_tensor(np.asarray(clean)[idx], dtype=torch.float32)
        log.info("%s: q_0 trained on %d clean images", job.context, len(idx))
        ckpt, runtime = denoiser_mstep(job, x, None, None, mstep_cfg=self.init_mstep_cfg())
        ckpt["clean_subset"] = [int(i) for i in idx]
        return ckpt, runtime

    # -- E-step: the reference's DPS on its VP chain -----------------------------------------------
    def guidance_at(self, iteration: int) -> float:
        """The DPS scale of EM iteration ``iteration`` (>= 1): guidance[min(k, len) - 1]."""
        if isinstance(iteration, bool) or not isinstance(iteration, (int, np.integer)) or iteration < 1:
            raise ValueError(f"iteration: the E-step runs at iterations >= 1, got {iteration!r}")
        g = self.options.guidance
        return float(g[min(int(iteration), len(g)) - 1])

    def estep_chain(self, schedule, est):
        """The reference's chain: the VE levels of the 1000-step linear-beta VP chain respaced to
        ``steps`` evaluations (``steps - 1`` DDPM bridges and the final step to x_0), DDPM sampler."""
        from emprior.diffusion.vp_chain import VPChain

        return VPChain(1000, float(self.options.data_scale)), {**est, "sampler": "ddpm",
                                                               "steps": int(self.options.steps) - 1}

    def estep_subset(self, job, n):
        self.iteration = job.iteration
        f = float(self.options.estep_fraction)
        if f >= 1.0:
            return None
        m = max(1, int(round(f * n)))
        rng = np.random.default_rng(job.derive_seed("estep_subset"))
        return np.sort(rng.choice(n, size=m, replace=False))

    def posterior(self, prior, op, y):
        from emprior.posterior import make_posterior

        if self.iteration is None:
            raise RuntimeError("EMDiffusion.posterior: the E-step's iteration is unknown "
                               "(estep_subset(job, n) sets it before the posterior is built)")
        o = self.options
        return make_posterior("dps_vp", prior.denoiser, op, y, scale=self.guidance_at(self.iteration), norm=o.norm,
                              batch=o.batch, clip=o.clip, data_scale=o.data_scale, T=1000, respacing=o.steps,
                              guidance_per=o.guidance_per)

    # -- M-step: DSM on the stored reconstructions, from the previous EMA weights -----------------
    def uses_previous(self, iteration):
        return iteration >= 1

    def mstep(self, job, data, previous, obs, resume_path):
        data = stored_reconstructions(data, self.options.reconstructions, float(self.options.data_scale))
        if previous is not None and self.options.continue_from == "ema":
            # denoiser_mstep starts from checkpoint["raw_weights"]: hand it the EMA weights instead
            ckpt = {**previous.checkpoint, "raw_weights": previous.checkpoint["weights"]}
            previous = SimpleNamespace(kind=previous.kind, checkpoint=ckpt)
        return denoiser_mstep(job, data, previous, resume_path)

    # -- report -------------------------------------------------------------------------------------
    def clean_data(self):
        """clean_subset, else round(clean_fraction n) of the dataset's n (validate ensures one is known)."""
        return self.clean_count(int((self.exp.get("dataset") or {}).get("n") or 0))
