"""DiEM (Sec. 4): learning a diffusion prior from observations by expectation-maximization.

- q_0: a Gaussian fitted by EM to the observations (Sec. 4.1, :func:`~emprior.methods.stages.gaussian_init`);
- E-step: posterior samples with the variant's posterior sampler inside the experiment's diffusion
  sampler; the paper's choice is MMPS (Algorithm 3, Eqs. 19-23) with the Tweedie covariance (Eq. 21,
  CG truncated to ``maxiter``), and the heuristics ``sigma_t`` and ``inv`` = (I + Sigma_t^-1)^-1 are
  the Table 1 ablations. Any registered posterior sampler can stand in (``posterior.method``);
- M-step: denoising score matching (Eq. 4) from the previous iteration's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emprior.core.errors import ConfigError
from emprior.core.registry import option
from emprior.methods.base import EM_METHODS, EMMethod
from emprior.methods.stages import denoiser_mstep, gaussian_init


@dataclass(frozen=True)
class DiEMOptions:
    posterior: dict = option({"method": "mmps"}, doc="posterior sampler of the E-step: {method: NAME, **its options}")


@EM_METHODS.register("diem", DiEMOptions)
class DiEM(EMMethod):
    """The paper's method: Gaussian q_0, MMPS E-step, DSM M-step (Algorithm 1)."""

    stages = ("init", "estep", "mstep")
    estep_check = True
    label = "DiEM"

    def __init__(self, options: DiEMOptions, exp: dict[str, Any]):
        super().__init__(options, exp)
        self.sampler = dict(options.posterior).get("method", "mmps")
        self.sampler_options = {k: v for k, v in options.posterior.items() if k != "method"}

    def validate(self, where: str) -> None:
        from emprior.posterior import POSTERIOR_SAMPLERS

        POSTERIOR_SAMPLERS.options(self.sampler, self.sampler_options, where=f"{where}.posterior")

    def init_prior(self, job, obs, clean=None):
        return gaussian_init(job, obs)

    def table_covariance(self):
        return self.sampler_options.get("covariance", "tweedie") if self.sampler == "mmps" else self.sampler

    def posterior(self, prior, op, y):
        from emprior.posterior import make_posterior

        opts = dict(self.sampler_options)
        if opts.get("covariance") == "prior":
            if prior.gaussian is None:
                raise ConfigError("covariance 'prior' needs a Gaussian Sigma_x (available at iteration 1 only)")
            opts["prior"] = prior.gaussian
        return make_posterior(self.sampler, prior.denoiser, op, y, **opts)

    def mstep(self, job, data, previous, obs, resume_path):
        return denoiser_mstep(job, data, previous, resume_path)
