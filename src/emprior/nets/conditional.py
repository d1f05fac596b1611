"""Conditional denoisers d(x_t, c, sigma) ~ E[x | x_t, c] for the peers that condition a network on
side information (DiffEM: the observation y; AmbientDiffusion: the corruption mask), built from any
registered architecture.

The network h of ``denoiser.net`` is built for events with the condition's channels appended
(C + C_c, H, W) and its first C output channels are used, with the EDM preconditioning of Eq. (26)
applied to x_t only::

    d(x_t, c, sigma) = x_t/(sigma^2 + 1) + c_out h([c_in x_t, c], sigma)[:C]

so a fresh network (zero output layer) is again the exact denoiser of N(0, I), whatever c is.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from emprior.core.errors import ConfigError
from emprior.diffusion.schedule import batch_sigma, expand_as_batch
from emprior.nets.build import NETS, NetConfigError

__all__ = ["ConditionalDenoiser", "build_conditional_denoiser"]


class ConditionalDenoiser(nn.Module):
    def __init__(self, net: nn.Module, channels: int):
        super().__init__()
        self.net = net
        self.channels = int(channels)

    def forward(self, x_t: Tensor, cond: Tensor, sigma: Tensor | float) -> Tensor:
        if cond.shape[0] != x_t.shape[0] or cond.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"cond: shape {tuple(cond.shape)} does not match x_t {tuple(x_t.shape)} "
                             "(same batch and spatial sizes)")
        sigma = batch_sigma(sigma, x_t)
        s = expand_as_batch(sigma, x_t)
        c_out = s / torch.sqrt(s**2 + 1)
        c_in = 1 / torch.sqrt(s**2 + 1)
        h = self.net(torch.cat([c_in * x_t, cond.to(x_t.dtype)], dim=1), sigma)[:, :self.channels]
        return x_t / (s**2 + 1) + c_out * h


def build_conditional_denoiser(cfg: dict, x_shape: Sequence[int], cond_channels: int) -> ConditionalDenoiser:
    """d(x_t, c, sigma) for events ``x_shape`` and a condition of ``cond_channels`` channels (for a flat
    event (d,), ``cond_channels`` features)."""
    x_shape = tuple(int(k) for k in x_shape)
    kind = cfg.get(NETS.key)
    try:
        builder = NETS.get(kind, where="denoiser.net")
        opts = NETS.options(kind, cfg, where="denoiser")
    except ConfigError as exc:
        raise NetConfigError(str(exc)) from None
    in_shape = (x_shape[0] + int(cond_channels), *x_shape[1:])
    return ConditionalDenoiser(builder(opts, in_shape), x_shape[0])
