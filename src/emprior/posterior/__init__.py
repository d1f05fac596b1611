"""Posterior denoisers E[x | x_t, y] (MMPS and its peers), one sampler per module, one registry.

Every module of this package is imported here, so a new sampler file that registers itself with
``@POSTERIOR_SAMPLERS.register(name, Options)`` is available to :func:`make_posterior` (and to the
generated config schema) with no other edit.
"""

from emprior.core.registry import import_submodules
from emprior.posterior.base import POSTERIOR_SAMPLERS, PosteriorDenoiser, make_posterior
from emprior.posterior.diffpir import DiffPIR, DiffPIROptions
from emprior.posterior.dps import DPS, DPSOptions
from emprior.posterior.mmps import COVARIANCES, MMPS, SOLVERS, MMPSOptions
from emprior.posterior.pigdm import PiGDM, PiGDMOptions
from emprior.posterior.tmpd import TMPD

import_submodules(__name__, __path__)  # a new plug-in file registers itself

__all__ = [
    "COVARIANCES",
    "DPS",
    "MMPS",
    "POSTERIOR_SAMPLERS",
    "SOLVERS",
    "TMPD",
    "DPSOptions",
    "DiffPIR",
    "DiffPIROptions",
    "MMPSOptions",
    "PiGDM",
    "PiGDMOptions",
    "PosteriorDenoiser",
    "make_posterior",
]
