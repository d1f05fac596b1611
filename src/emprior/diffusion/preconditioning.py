"""EDM preconditioning of a network into a denoiser (Eq. (26))."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emprior.diffusion.schedule import batch_sigma, expand_as_batch

__all__ = ["PreconditionedDenoiser"]


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
        s = expand_as_batch(sigma, x_t)
        c_out = s / torch.sqrt(s**2 + 1)
        c_in = 1 / torch.sqrt(s**2 + 1)
        # c_skip x_t written as a division so that h = 0 gives x_t/(s^2 + 1) bit for bit.
        return x_t / (s**2 + 1) + c_out * self.net(c_in * x_t, sigma)
