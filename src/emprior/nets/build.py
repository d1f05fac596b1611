"""The network registry :data:`NETS` and :func:`build_denoiser`: a config mapping -> the preconditioned
denoiser d(x_t, sigma) of Eq. (26) around a registered network h(x, sigma).

A network registers a builder ``(options, x_shape) -> nn.Module`` with its options dataclass (the
config keys beside ``net``); :mod:`emprior.nets.mlp` and :mod:`emprior.nets.unet` are the two of
the paper. The output layer of every network is initialised to zero, so a fresh denoiser is
d(x_t, sigma) = x_t/(sigma^2 + 1), the exact denoiser of N(0, I).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from emprior.core.errors import ConfigError
from emprior.core.registry import Registry
from emprior.diffusion.preconditioning import PreconditionedDenoiser

NETS: Registry[Callable[[Any, tuple[int, ...]], nn.Module]] = Registry("network", "net")


class NetConfigError(ConfigError, ValueError):
    """A network config key is missing, unknown or out of range (a ValueError and a ConfigError)."""


def pos_int(v: Any, key: str) -> int:
    """A positive integer option, else a one-line NetConfigError naming ``key``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise NetConfigError(f"net config: {key} must be a positive integer, got {v!r}")
    return v


def int_list(v: Any, key: str, minimum: int = 1) -> tuple[int, ...]:
    """A non-empty list of integers >= ``minimum``, as a tuple; else a NetConfigError naming ``key``."""
    if not isinstance(v, (list, tuple)) or len(v) == 0:
        raise NetConfigError(f"net config: {key} must be a non-empty list, got {v!r}")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < minimum for k in v):
        raise NetConfigError(f"net config: {key} entries must be integers >= {minimum}, got {list(v)!r}")
    return tuple(v)


def build_denoiser(cfg: dict, x_shape: Sequence[int]) -> PreconditionedDenoiser:
    """Build d = PreconditionedDenoiser(h) for events of shape ``x_shape`` (no batch axis).

    ``{"net": "mlp", "hidden": [256, 256, 256], "emb_features": 64}`` -> :class:`~emprior.nets.mlp.MLP`
    over prod(x_shape) features; ``{"net": "unet", "hid_channels": [...], "hid_blocks": [...],
    "attention_heads": [...], "kernel_size": 3, "dropout": 0.1, "emb_features": 256,
    "pixel_shuffle": 1}`` -> :class:`~emprior.nets.unet.UNet` on (C, H, W) events, wrapped in
    :class:`~emprior.nets.wrappers.PixelShuffleWrapper` when pixel_shuffle > 1. Missing keys take the
    Table 2/3 defaults (the options dataclasses); unknown keys and bad values raise
    :class:`NetConfigError` (a ValueError) naming the key.
    """
    if not isinstance(cfg, dict):
        raise NetConfigError(f"net config: expected a mapping, got {type(cfg).__name__}")
    x_shape = tuple(x_shape)
    if len(x_shape) == 0 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in x_shape):
        raise NetConfigError(f"x_shape: sizes must be positive integers, got {x_shape!r}")
    kind = cfg.get(NETS.key)
    try:
        builder = NETS.get(kind, where="denoiser.net")
        opts = NETS.options(kind, cfg, where="denoiser")
    except ConfigError as exc:
        raise NetConfigError(str(exc)) from None  # also a ValueError, as every bad net config
    return PreconditionedDenoiser(builder(opts, x_shape))
