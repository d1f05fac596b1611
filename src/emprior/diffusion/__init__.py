"""Variance-exploding diffusion: schedule, preconditioning, DSM loss, EMA and the registered samplers."""

from emprior.diffusion.ema import EMA
from emprior.diffusion.loss import dsm_loss, sample_beta33
from emprior.diffusion.preconditioning import PreconditionedDenoiser
from emprior.diffusion.samplers import (
    DDIM,
    DDPM,
    DIFFUSION_SAMPLERS,
    DDIMOptions,
    PCOptions,
    PredictorCorrector,
    ReverseStep,
    sample,
    sample_prior,
)
from emprior.diffusion.schedule import Denoiser, Schedule, batch_sigma
from emprior.diffusion.heun import Heun, HeunOptions  # noqa: E402  registers "heun"

__all__ = [
    "DDIM",
    "DDPM",
    "DIFFUSION_SAMPLERS",
    "EMA",
    "Heun",
    "HeunOptions",
    "DDIMOptions",
    "Denoiser",
    "PCOptions",
    "PreconditionedDenoiser",
    "PredictorCorrector",
    "ReverseStep",
    "Schedule",
    "batch_sigma",
    "dsm_loss",
    "sample",
    "sample_beta33",
    "sample_prior",
]
