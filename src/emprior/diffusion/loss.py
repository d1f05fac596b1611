"""Denoising score matching loss (Eq. (4)) with Beta(3, 3) noise levels (Appendix C)."""

from __future__ import annotations

import torch
from torch import Tensor

from emprior.diffusion.schedule import Denoiser, Schedule, expand_as_batch

__all__ = ["dsm_loss", "sample_beta33"]


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
    x_t = x + expand_as_batch(sigma, x) * z
    err = (denoiser(x_t, sigma) - x).reshape(b, -1).square().mean(dim=1)
    lam = 1 / sigma**2 + 1
    return (lam * err).mean()
