"""Noise-conditional networks h(x, sigma) of Eq. (26) (Appendix C, Tables 2 and 3).

- :class:`MLP` (low-dimensional manifold, Table 2): concat(x, emb(sigma)) -> 3 x [Linear, SiLU,
  LayerNorm] -> Linear.
- :class:`UNet` (CIFAR-10 / MRI, Table 3): residual blocks modulated by the noise embedding in the
  style of diffusion transformers (adaLN-Zero), multi-head self-attention after each residual block at
  levels with heads > 0, down/up sampling between levels and skip connections.
- :class:`PixelShuffleWrapper` (MRI): (B, 1, 320, 320) <-> (B, 16, 80, 80) around a network.
- :func:`build_denoiser`: a config dict -> :class:`~emprior.diffusion.preconditioning.PreconditionedDenoiser`.

The output layer of every network is initialised to zero, so a fresh denoiser is
d(x_t, sigma) = x_t/(sigma^2 + 1), the exact denoiser of N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emprior.diffusion.preconditioning import PreconditionedDenoiser
from emprior.diffusion.schedule import batch_sigma
from emprior.core.errors import ConfigError

LOG_SIGMA_MIN = math.log(1e-3)
LOG_SIGMA_MAX = math.log(1e2)


class NetConfigError(ConfigError, ValueError):
    """A network config key is missing, unknown or out of range (a ValueError and a ConfigError)."""


def noise_embedding(
    sigma: Tensor, features: int, log_min: float = LOG_SIGMA_MIN, log_max: float = LOG_SIGMA_MAX
) -> Tensor:
    """Smooth one-hot encoding of log sigma, shape (B, features)::

        c_j = log_min + j (log_max - log_min)/(features - 1),  w = (log_max - log_min)/(features - 1)
        emb_j = exp(-(log sigma - c_j)^2 / (2 w^2))

    Gaussian bumps at ``features`` evenly spaced centres spanning [log_min, log_max] with width equal
    to their spacing, so neighbouring bumps overlap and the code varies smoothly with sigma (a single
    centre at the midpoint with width log_max - log_min when features = 1).
    """
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"features: must be a positive integer, got {features!r}")
    if not log_max > log_min:
        raise ValueError(f"log_max: must exceed log_min={log_min!r}, got {log_max!r}")
    sigma = torch.as_tensor(sigma)
    if not sigma.is_floating_point():
        sigma = sigma.to(torch.get_default_dtype())
    sigma = sigma.reshape(-1) if sigma.dim() > 0 else sigma.reshape(1)
    if features == 1:
        centres = torch.tensor([(log_min + log_max) / 2], dtype=sigma.dtype, device=sigma.device)
        width = log_max - log_min
    else:
        centres = torch.linspace(log_min, log_max, features, dtype=sigma.dtype, device=sigma.device)
        width = (log_max - log_min) / (features - 1)
    u = (torch.log(sigma)[:, None] - centres) / width
    return torch.exp(-0.5 * u**2)


class MLP(nn.Module):
    """Table 2: input concat(x, emb(sigma)), hidden (256, 256, 256), SiLU then LayerNorm after each
    hidden layer, linear (zero-initialised) output. ``x`` may be (B, features) or (B, *shape) with
    prod(shape) = features; the output has the shape of ``x``."""

    def __init__(self, features: int, hidden: Sequence[int] = (256, 256, 256), emb_features: int = 64):
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features: must be a positive integer, got {features!r}")
        hidden = tuple(hidden)
        if len(hidden) == 0 or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden: must be a non-empty list of positive sizes, got {hidden!r}")
        if emb_features < 1:
            raise ValueError(f"emb_features: must be a positive integer, got {emb_features!r}")
        self.features = features
        self.emb_features = emb_features
        layers: list[nn.Module] = []
        width = features + emb_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.SiLU(), nn.LayerNorm(int(h))]
            width = int(h)
        out = nn.Linear(width, features)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        if flat.shape[1] != self.features:
            raise ValueError(f"x: expected {self.features} features per sample, got shape {tuple(x.shape)}")
        emb = noise_embedding(batch_sigma(sigma, x), self.emb_features).to(x.dtype)
        return self.layers(torch.cat([flat, emb], dim=1)).reshape(x.shape)


def _channel_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the channel axis of (B, C, H, W), per pixel, without affine parameters."""
    # F.layer_norm on a channels-last view: one fused kernel, ~2x faster forward + backward on CPU than
    # mean/var over the strided channel axis.
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2], eps=eps).movedim(-1, 1)


class ModulatedResBlock(nn.Module):
    """Residual block modulated adaLN-Zero style (DiT)::

        (a, b, g) = Linear(SiLU(emb))                     per-channel, the Linear initialised to 0
        y = (1 + a) * LN_C(x) + b
        y = Conv(Dropout(SiLU(Conv(y))))
        x <- x + g * y

    so every block starts as the identity.
    """

    def __init__(self, channels: int, emb_features: int, kernel_size: int, dropout: float):
        super().__init__()
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(emb_features, 3 * channels))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        a, b, g = self.modulation(emb)[:, :, None, None].chunk(3, dim=1)
        y = (1 + a) * _channel_norm(x) + b
        y = self.conv2(self.dropout(F.silu(self.conv1(y))))
        return x + g * y


class SelfAttention2d(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions, residual: x + MHA(LN_C(x))."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = _channel_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        y, _ = self.attn(y, y, y, need_weights=False)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class _Level(nn.Module):
    """hid_blocks residual blocks, each followed by self-attention when heads > 0."""

    def __init__(
        self, channels: int, blocks: int, heads: int, emb_features: int, kernel_size: int, dropout: float
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            ModulatedResBlock(channels, emb_features, kernel_size, dropout) for _ in range(blocks)
        )
        self.attns = nn.ModuleList(
            SelfAttention2d(channels, heads) if heads > 0 else nn.Identity() for _ in range(blocks)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for block, attn in zip(self.blocks, self.attns):
            x = attn(block(x, emb))
        return x


class UNet(nn.Module):
    """Table 3 U-Net for h(x, sigma), (B, C_in, H, W) -> (B, C_out, H, W).

    emb = MLP(noise_embedding(sigma)); input conv to hid_channels[0]; encoder level i runs
    hid_blocks[i] modulated residual blocks (+ attention if attention_heads[i] > 0) then, except at
    the last level, a stride-2 conv to hid_channels[i+1]. The decoder mirrors it: at each level the
    features are concatenated with the encoder's skip, fused by a 1x1 conv, run through
    hid_blocks[i] blocks, then nearest-upsampled to the next skip's size (so odd sizes work) and
    convolved to hid_channels[i-1]. Output: LN_C, SiLU, zero-initialised conv to out_channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hid_channels: Sequence[int] = (128, 256, 384),
        hid_blocks: Sequence[int] = (5, 5, 5),
        attention_heads: Sequence[int] = (0, 0, 4),
        kernel_size: int = 3,
        dropout: float = 0.1,
        emb_features: int = 256,
    ):
        super().__init__()
        hid_channels, hid_blocks, attention_heads = (
            tuple(hid_channels),
            tuple(hid_blocks),
            tuple(attention_heads),
        )
        for name, v in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("emb_features", emb_features),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if len(hid_channels) == 0 or any(c < 1 for c in hid_channels):
            raise ValueError(
                f"hid_channels: must be a non-empty list of positive sizes, got {hid_channels!r}"
            )
        if len(hid_blocks) != len(hid_channels) or any(k < 1 for k in hid_blocks):
            raise ValueError(
                f"hid_blocks: must hold {len(hid_channels)} positive counts (one per level), got {hid_blocks!r}"
            )
        if len(attention_heads) != len(hid_channels) or any(h < 0 for h in attention_heads):
            raise ValueError(
                f"attention_heads: must hold {len(hid_channels)} non-negative counts, got {attention_heads!r}"
            )
        for c, h in zip(hid_channels, attention_heads):
            if h > 0 and c % h != 0:
                raise ValueError(f"attention_heads: {h} heads do not divide {c} channels")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be a positive odd integer, got {kernel_size!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {dropout!r}")
        self.emb_features = emb_features
        levels = len(hid_channels)
        pad = kernel_size // 2
        self.emb = nn.Sequential(
            nn.Linear(emb_features, emb_features), nn.SiLU(), nn.Linear(emb_features, emb_features)
        )
        self.inp = nn.Conv2d(in_channels, hid_channels[0], kernel_size, padding=pad)
        args = {"emb_features": emb_features, "kernel_size": kernel_size, "dropout": dropout}
        self.down_levels = nn.ModuleList(
            _Level(hid_channels[i], hid_blocks[i], attention_heads[i], **args) for i in range(levels)
        )
        self.downs = nn.ModuleList(
            nn.Conv2d(hid_channels[i], hid_channels[i + 1], kernel_size, stride=2, padding=pad)
            for i in range(levels - 1)
        )
        self.fuse = nn.ModuleList(nn.Conv2d(2 * hid_channels[i], hid_channels[i], 1) for i in range(levels))
        self.up_levels = nn.ModuleList(
            _Level(hid_channels[i], hid_blocks[i], attention_heads[i], **args) for i in range(levels)
        )
        self.ups = nn.ModuleList(
            nn.Conv2d(hid_channels[i + 1], hid_channels[i], kernel_size, padding=pad)
            for i in range(levels - 1)
        )
        self.out = nn.Conv2d(hid_channels[0], out_channels, kernel_size, padding=pad)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"x: expected shape (B, C, H, W), got {tuple(x.shape)}")
        emb = self.emb(noise_embedding(batch_sigma(sigma, x), self.emb_features).to(x.dtype))
        h = self.inp(x)
        skips = []
        for i, level in enumerate(self.down_levels):
            h = level(h, emb)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        for i in reversed(range(len(self.up_levels))):
            skip = skips[i]
            if i < len(self.ups):  # coming up from level i + 1
                h = self.ups[i](F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            h = self.fuse[i](torch.cat([h, skip], dim=1))
            h = self.up_levels[i](h, emb)
        return self.out(F.silu(_channel_norm(h)))


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


_MLP_KEYS = {"net", "hidden", "emb_features"}
_UNET_KEYS = {
    "net",
    "hid_channels",
    "hid_blocks",
    "attention_heads",
    "kernel_size",
    "dropout",
    "emb_features",
    "pixel_shuffle",
}


def _pos_int(cfg: dict, key: str, default: int) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise NetConfigError(f"net config: {key} must be a positive integer, got {v!r}")
    return v


def _int_list(cfg: dict, key: str, default: Sequence[int], minimum: int = 1) -> tuple[int, ...]:
    v = cfg.get(key, default)
    if not isinstance(v, (list, tuple)) or len(v) == 0:
        raise NetConfigError(f"net config: {key} must be a non-empty list, got {v!r}")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < minimum for k in v):
        raise NetConfigError(f"net config: {key} entries must be integers >= {minimum}, got {list(v)!r}")
    return tuple(v)


def build_denoiser(cfg: dict, x_shape: Sequence[int]) -> PreconditionedDenoiser:
    """Build d = PreconditionedDenoiser(h) for events of shape ``x_shape`` (no batch axis).

    ``{"net": "mlp", "hidden": [256, 256, 256], "emb_features": 64}`` -> :class:`MLP` over
    prod(x_shape) features; ``{"net": "unet", "hid_channels": [...], "hid_blocks": [...],
    "attention_heads": [...], "kernel_size": 3, "dropout": 0.1, "emb_features": 256,
    "pixel_shuffle": 1}`` -> :class:`UNet` on (C, H, W) events, wrapped in
    :class:`PixelShuffleWrapper` when pixel_shuffle > 1. Missing keys take the Table 2/3 defaults;
    unknown keys and bad values raise :class:`NetConfigError` (a ValueError) naming the key.
    """
    if not isinstance(cfg, dict):
        raise NetConfigError(f"net config: expected a mapping, got {type(cfg).__name__}")
    x_shape = tuple(x_shape)
    if len(x_shape) == 0 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in x_shape):
        raise NetConfigError(f"x_shape: sizes must be positive integers, got {x_shape!r}")
    kind = cfg.get("net")
    if kind == "mlp":
        unknown = sorted(set(cfg) - _MLP_KEYS)
        if unknown:
            raise NetConfigError(f"net config: unknown key {unknown[0]!r} for net 'mlp'")
        net: nn.Module = MLP(
            math.prod(x_shape),
            hidden=_int_list(cfg, "hidden", (256, 256, 256)),
            emb_features=_pos_int(cfg, "emb_features", 64),
        )
    elif kind == "unet":
        unknown = sorted(set(cfg) - _UNET_KEYS)
        if unknown:
            raise NetConfigError(f"net config: unknown key {unknown[0]!r} for net 'unet'")
        if len(x_shape) != 3:
            raise NetConfigError(f"x_shape: net 'unet' needs (C, H, W) events, got {x_shape!r}")
        hid_channels = _int_list(cfg, "hid_channels", (128, 256, 384))
        hid_blocks = _int_list(cfg, "hid_blocks", (5, 5, 5))
        heads = _int_list(cfg, "attention_heads", (0, 0, 4), minimum=0)
        for key, v in (("hid_blocks", hid_blocks), ("attention_heads", heads)):
            if len(v) != len(hid_channels):
                raise NetConfigError(
                    f"net config: {key} has {len(v)} entries but hid_channels has {len(hid_channels)}"
                )
        for c, h in zip(hid_channels, heads):
            if h > 0 and c % h:
                raise NetConfigError(f"net config: attention_heads {h} does not divide hid_channels {c}")
        kernel_size = _pos_int(cfg, "kernel_size", 3)
        if kernel_size % 2 == 0:
            raise NetConfigError(f"net config: kernel_size must be odd, got {kernel_size}")
        dropout = cfg.get("dropout", 0.1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise NetConfigError(f"net config: dropout must be a number in [0, 1), got {dropout!r}")
        factor = _pos_int(cfg, "pixel_shuffle", 1)
        c, h, w = x_shape
        if h % factor or w % factor:
            raise NetConfigError(f"net config: pixel_shuffle {factor} does not divide x_shape {x_shape!r}")
        net = UNet(
            c * factor**2,
            c * factor**2,
            hid_channels=hid_channels,
            hid_blocks=hid_blocks,
            attention_heads=heads,
            kernel_size=kernel_size,
            dropout=float(dropout),
            emb_features=_pos_int(cfg, "emb_features", 256),
        )
        if factor > 1:
            net = PixelShuffleWrapper(net, factor)
    else:
        raise NetConfigError(f"net config: net must be 'mlp' or 'unet', got {kind!r}")
    return PreconditionedDenoiser(net)
