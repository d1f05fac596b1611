"""Wrappers around a network h(x, sigma): pixel (un)shuffling for large single-channel images (MRI), and
mixed precision (:class:`Autocast`, the ``precision.autocast`` switch of :mod:`emprior.core.precision`)."""

from __future__ import annotations

from typing import Any

import torch
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


class Autocast(nn.Module):
    """``fn(*args)`` with its forward under ``torch.autocast(dtype)`` on the device of its first tensor
    argument, and a floating output cast back to that argument's dtype, so that a bf16 network output
    never reaches a float32 consumer (the DSM loss, a Krylov solve). ``fn`` may be a module (its
    parameters are this module's: ``.parameters()`` gives the device and dtype, as for ``fn``) or any
    callable (a closed-form denoiser). Other attributes are ``fn``'s."""

    def __init__(self, fn: Any, dtype: torch.dtype):
        super().__init__()
        self.fn = fn
        self.dtype = dtype

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "fn":  # not set yet (copy, unpickling): no recursion
                raise
            return getattr(self.fn, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        like = next(a for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        with torch.autocast(like.device.type, dtype=self.dtype):
            out = self.fn(*args, **kwargs)
        if isinstance(out, Tensor) and out.is_floating_point() and like.is_floating_point():
            out = out.to(like.dtype)
        return out
