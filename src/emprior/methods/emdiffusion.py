"""EMDiffusion (Bai, Wang, Chen & Sun 2024, "An Expectation-Maximization Algorithm for Training Clean
Diffusion Models from Corrupted Observations") as an EM-method plug-in.

The paper, in the terms of this suite:

- q_0 is a diffusion model trained on a *small clean subset* (default 50 images; the ablation, Fig. 5a,
  uses 10 to 500). Here: the experiment's ``denoiser`` net trained by denoising score matching (the
  M-step machinery, :func:`~emprior.methods.stages.denoiser_mstep`) on ``clean_subset`` images of
  clean.h5 drawn without replacement from the stream ``(seed, experiment, variant, "clean_subset")``,
  for ``init_steps`` steps (default: the experiment's ``mstep`` budget). The drawn positions are stored
  in iter_000/model.pt as ``ckpt["clean_subset"]`` (a list of ints) so an audit can see which clean
  images the method saw; Table 1 counts them (:meth:`EMDiffusion.clean_data`).
- E-step: DPS (Chung et al. 2023; gradient of the non-squared residual norm, as their code and
  :class:`~emprior.posterior.dps.DPS`) with a guidance weight that is *decreased* over the EM stages:
  the paper's Fig. 5c finds the best weight falls as the prior improves (a weak q_0 trained on 50
  images mode-collapses onto its training set unless the likelihood is weighted up, Fig. 2).
  ``guidance`` is the per-stage schedule: EM iteration k uses ``guidance[min(k, len) - 1]``
  (:meth:`EMDiffusion.guidance_at`), i.e. the last value from then on.
- M-step: DSM continuing from the previous weights at every iteration (``uses_previous(k)`` for all
  k >= 1: q_0 is already a denoiser), with the experiment's ``mstep`` settings.
- ``estep_fraction`` < 1 samples the posterior of a seeded random subset of the observations at each
  iteration (:meth:`EMDiffusion.estep_subset`); the M-step then trains on those samples only.

How the stage reaches the posterior. :meth:`EMMethod.posterior` receives no job, so the E-step's
iteration is taken from :meth:`estep_subset`, which the pipeline (:func:`emprior.pipeline.em.estep`)
calls with the job before it builds any posterior: it stores ``job.iteration`` on the method, and
:meth:`posterior` builds ``DPS(zeta=guidance_at(iteration))``. A posterior asked for before any
``estep_subset`` call is an error rather than a silent default. The zeta used is also put into the
posterior's ``stats`` (``"zeta"``), which the E-step writes into each shard's ``solver`` attributes,
so posterior.h5 records the guidance it was drawn with.

Default guidance and its scale. This suite's DPS is a VE posterior *denoiser*:
E[x | x_t, y] ~ x_hat + sigma^2 zeta J^T A^T u (u the unit residual), which the DDPM sampler turns into
a move of zeta (sigma_t^2 - sigma_{t-1}^2) J^T A^T u per step, i.e. about 2 zeta sigma^2 per unit of
log sigma. The paper's code moves x^VP by ``scale`` grad ||y - A x_hat|| per step of a 1000-step linear-beta
VP chain on [-1, 1] images; in VE coordinates that is scale (1 + sigma^2) J^T A^T u per step, and
per unit of log sigma scale (1 + sigma^2) / (beta_t / (2 (1 - abar_t))). No constant zeta matches a
constant VP scale at every noise level (the VP step is a zeta growing like 1/sigma^2 as sigma -> 0), so
:func:`vp_scale_to_zeta` matches the two pushes per unit log sigma at one reference level, sigma = 1
on the paper's [-1, 1] scale (sigma = 2 on the [-2, 2] scale of this suite's images), where the image's
content is decided; the data scale enters as a factor ``data_scale`` (2) on the move. For the paper's
scale 7 that gives zeta ~ 840 on a 48-step grid and ~ 700 on a 256-step one. Since the move is along
the *unit* residual, its size per measured pixel goes like zeta / sqrt(m): CIFAR-10 at 75 % deleted
measures m = 768 entries, the 8x8 digits 16, so the same per-pixel push is about sqrt(48) ~ 7 times
smaller a zeta on digits (700 / 7 ~ 100). That is what the default uses, checked on the digits CPU
preset (48 DDPM steps, q_0 trained on 50 clean digits for the preset's 800 DSM steps, 250 observations,
pixels in [-2, 2]): zeta = 10 / 30 / 100 / 300 / 840 gave measured-pixel MSE 0.032 / 0.014 / 0.0018 /
1e-4 / < 1e-4 and max |x| 3.8 / 4.2 / 5.8 / 7.3 / 10.1, with the unmeasured-pixel MSE rising as 1.18 /
1.24 / 1.54 / 2.04 / 2.48 (the clean images' variance: 2.34): from about 100 on, DPS fits y at the price
of artefacts off the data range. The default schedule is therefore [100, 50, 25]: the first stage, whose
q_0 is the weakest (and, weighted too little, copies its training images: the paper's Fig. 2), fits y
closely; later stages halve the weight, as the paper's decreasing weights do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from emprior.core.errors import ConfigError
from emprior.core.log import get_logger
from emprior.core.registry import option
from emprior.core.rng import numpy_rng
from emprior.methods.base import EM_METHODS, EMMethod
from emprior.methods.stages import denoiser_mstep

log = get_logger("emprior.methods.emdiffusion")

# first-stage DPS weight of the default schedule (see the module docstring for how it was chosen)
DEFAULT_ZETA = 100.0


def vp_scale_to_zeta(scale: float, sigma: float = 1.0, data_scale: float = 2.0, steps: int = 48,
                     sigma_min: float = 1e-3, sigma_max: float = 100.0, beta_min: float = 1e-4,
                     beta_max: float = 0.02, vp_steps: int = 1000) -> float:
    """The constant VE zeta of :class:`~emprior.posterior.dps.DPS` whose push per unit of log sigma, at
    noise level ``sigma`` (on the paper's [-1, 1] image scale), equals that of a DPS step ``scale`` in
    a ``vp_steps``-step linear-beta VP chain (the DPS / EMDiffusion code), with this suite's images
    ``data_scale`` times larger and the exponential VE grid of ``steps`` steps."""
    # VP chain: abar_t = prod (1 - beta_i); find the step whose sigma^2 = (1 - abar)/abar crosses sigma^2
    betas = np.linspace(beta_min, beta_max, vp_steps)
    abar = np.cumprod(1.0 - betas)
    sig2 = (1.0 - abar) / abar
    t = int(np.clip(np.searchsorted(sig2, sigma**2), 0, vp_steps - 1))
    dlog_sigma = 0.5 * betas[t] / (1.0 - abar[t])  # |d log sigma| per VP step
    vp_push = data_scale * scale * (1.0 + sigma**2) / dlog_sigma  # per unit log sigma, this suite's scale
    log_rho = (math.log(sigma_min) - math.log(sigma_max)) / steps  # log(sigma_{t-1} / sigma_t) < 0
    s = data_scale * sigma
    ve_push_per_zeta = s**2 * (1.0 - math.exp(2 * log_rho)) / (-log_rho)
    return float(vp_push / ve_push_per_zeta)


@dataclass(frozen=True)
class EMDiffusionOptions:
    clean_subset: int = option(50, minimum=1, doc="clean images q_0 is trained on (paper: 50; ablation 10-500)")
    init_steps: int | None = option(None, minimum=1,
                                    doc="DSM steps of q_0 on the clean subset (default: the experiment's mstep budget)")
    guidance: list[float] = option([DEFAULT_ZETA, DEFAULT_ZETA / 2, DEFAULT_ZETA / 4],
                                   doc="DPS zeta per EM stage: iteration k uses guidance[min(k, len) - 1]")
    estep_fraction: float = option(1.0, exclusiveMinimum=0, maximum=1,
                                   doc="fraction of the observations each E-step samples (seeded, new per iteration)")


@EM_METHODS.register("emdiffusion", EMDiffusionOptions)
class EMDiffusion(EMMethod):
    """EMDiffusion (Bai et al. 2024): q_0 from a small clean subset, DPS E-step with decreasing guidance, DSM M-step."""

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
            raise ConfigError(f"{key}: must be a non-empty list of positive DPS weights, got {g!r}")
        for i, v in enumerate(g):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{key}[{i}]: must be a finite number > 0, got {v!r}")
        f = self.options.estep_fraction
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise ConfigError(f"{where}.estep_fraction: must be in (0, 1], got {f!r}")
        n = (self.exp.get("dataset") or {}).get("n")
        if isinstance(n, int) and self.options.clean_subset > n:
            raise ConfigError(f"{where}.clean_subset: {self.options.clean_subset} exceeds the dataset's n = {n}")

    # -- init: q_0 from a clean subset -----------------------------------------------------------
    def clean_indices(self, job, n_clean: int) -> np.ndarray:
        """Positions in clean.h5 of the clean subset (sorted, distinct), drawn by the variant's seed."""
        k = self.options.clean_subset
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

    # -- E-step: DPS with the stage's guidance -----------------------------------------------------
    def guidance_at(self, iteration: int) -> float:
        """The DPS zeta of EM iteration ``iteration`` (>= 1): guidance[min(k, len) - 1]."""
        if isinstance(iteration, bool) or not isinstance(iteration, (int, np.integer)) or iteration < 1:
            raise ValueError(f"iteration: the E-step runs at iterations >= 1, got {iteration!r}")
        g = self.options.guidance
        return float(g[min(int(iteration), len(g)) - 1])

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
        zeta = self.guidance_at(self.iteration)
        post = make_posterior("dps", prior.denoiser, op, y, zeta=zeta)
        post.stats["zeta"] = zeta  # goes into the shard's solver attributes
        return post

    # -- M-step: DSM from the previous weights ----------------------------------------------------
    def uses_previous(self, iteration):
        return iteration >= 1

    def mstep(self, job, data, previous, obs, resume_path):
        return denoiser_mstep(job, data, previous, resume_path)

    # -- report -------------------------------------------------------------------------------------
    def clean_data(self):
        return int(self.options.clean_subset)
