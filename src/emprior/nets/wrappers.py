"""Wrappers around a network h(x, sigma): pixel (un)shuffling for large single-channel images (MRI)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PixelShuffleWrapper(nn.Module):
    """Run ``net`` on pixel-unshuffled inputs: (B, C, H, W) -> (B, C f^2, H/f, W/f) -> net ->
    pixel_shuffle back to (B, C_out, H, W). MRI: (B, 1, 320, 320) <-> (B, 16, 80, 80) with f = 4."""

    def __init__(self, net: nn.Module, factor: int):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor: must be a positive integer, got {factor!r}")
        self.net = net
        self.factor = factor

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        f = self.factor
        if x.dim() != 4 or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"x: expected (B, C, H, W) with H, W divisible by factor={f}, got {tuple(x.shape)}"
            )
        return F.pixel_shuffle(self.net(F.pixel_unshuffle(x, f), sigma), f)
