"""``adm``: the ablated-diffusion-model U-Net of guided-diffusion (Dhariwal & Nichol 2021) as used by DPS
(Chung et al. 2023) for FFHQ-256, written here so that DPS's ``ffhq_10m.pt`` loads with a strict
``load_state_dict`` (diem-arxiv Appendix E, Table 4).

The network is the raw VP noise predictor ``net(x_t, t) -> (eps_hat, v)`` with integer timesteps
``t`` in [0, 1000) and 2 * 3 output channels (epsilon, then the learned-range variance logits, which
the suite ignores). :mod:`emprior.priors.adm` makes it a VE denoiser.

Reference read (pinned): DPS2022/diffusion-posterior-sampling@effbde7325b22ce8dc3e2c06c160c021e743a12d
``guided_diffusion/unet.py`` (UNetModel :467-734, ResBlock :214-327, AttentionBlock :330-376,
QKVAttentionLegacy :399-425, create_model :25-91), ``guided_diffusion/nn.py`` (GroupNorm32 :17-19,
timestep_embedding :103-121) and ``configs/model_config.yaml``; the same definitions as
openai/guided-diffusion@22e0df8183507e13a7813f8d38d51b072ca1e67c ``guided_diffusion/unet.py``.

Semantics kept exactly (they decide whether the pretrained weights mean what they were trained for):

- timestep embedding: with half = C/2, f_k = exp(-ln(10^4) k / half), emb = [cos(t f), sin(t f)]
  (cosine first), then Linear(C, 4C) -> SiLU -> Linear(4C, 4C);
- GroupNorm(32 groups, eps 1e-5) computed in float32;
- ResBlock with scale-shift norm: h = conv(SiLU(GN(x))); (scale, shift) = Linear(SiLU(emb));
  h = conv0(dropout(SiLU(GN(h) (1 + scale) + shift))); out = skip(x) + h, where down/up resblocks
  resample (2x2 average pool / nearest x2) both h (after SiLU(GN), before the first conv) and x;
- attention with 64 channels per head in the *legacy* order (DPS sets use_new_attention_order:
  False): the qkv 1x1 conv output is split into heads first, then each head's channels into
  q, k, v; logits q.k / sqrt(ch) with the 1/ch^(1/4) scale applied to q and k each, softmax in float32;
- zero-initialised last convolutions (ResBlock out, attention proj_out, network out), as the reference.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emprior.core.errors import ArtifactError, ConfigError

__all__ = ["ADMConfig", "ADMUNet", "DPS_FFHQ", "DPS_FFHQ_URL", "file_sha256", "load_guided_diffusion",
           "timestep_embedding"]

DPS_FFHQ_URL = ("https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh "
                "(DPS README, 'Download pretrained checkpoint': ffhq_10m.pt)")


@dataclass(frozen=True)
class ADMConfig:
    """The architecture hyper-parameters (guided-diffusion's ``create_model`` arguments)."""

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 6  # learn_sigma: epsilon (3) + variance interpolation (3)
    num_res_blocks: int = 1
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes with attention
    num_head_channels: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ConfigError(f"adm: image_size {self.image_size} not divisible by 2^{len(self.channel_mult) - 1}")
        if self.model_channels % 32:
            raise ConfigError(f"adm: model_channels {self.model_channels} must be a multiple of 32 (GroupNorm)")


DPS_FFHQ = ADMConfig()  # DPS configs/model_config.yaml


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half), k < half = dim // 2 (zero-padded if dim odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) evaluated in float32 whatever the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def _resample(kind: str | None) -> nn.Module:
    if kind == "down":
        return nn.AvgPool2d(2)
    if kind == "up":
        return nn.Upsample(scale_factor=2, mode="nearest")
    return nn.Identity()


class ResBlock(nn.Module):
    """Residual block with scale-shift (FiLM) conditioning on the timestep embedding; optional up/down."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int | None = None, dropout: float = 0.0,
                 resample: str | None = None):
        super().__init__()
        out_ch = out_ch or ch
        self.in_layers = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.h_upd, self.x_upd = _resample(resample), _resample(resample)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(GroupNorm32(out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.h_upd(self.in_layers[1](self.in_layers[0](x)))
        h = self.in_layers[2](h)
        x = self.x_upd(x)
        scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        for layer in self.out_layers[1:]:
            h = layer(h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention, heads of ``head_ch`` channels, legacy (heads-then-qkv) channel order."""

    def __init__(self, ch: int, head_ch: int):
        super().__init__()
        if ch % head_ch:
            raise ConfigError(f"adm: attention channels {ch} not divisible by num_head_channels {head_ch}")
        self.heads = ch // head_ch
        self.norm = GroupNorm32(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = _zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        n = qkv.shape[-1]
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, n).split(ch, dim=1)
        scale = ch ** -0.25
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        h = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, n)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class _Seq(nn.ModuleList):
    """A ModuleList applied in order, passing the embedding to the residual blocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for m in self:
            x = m(x, emb) if isinstance(m, ResBlock) else m(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion's UNetModel (unconditional, resblock up/down, scale-shift norm, float32).

    ``forward(x, t)``: x of shape (B, in_channels, S, S), t of shape (B,) (integer timesteps of the
    1000-step training process; a scalar is broadcast) -> (B, out_channels, S, S).
    """

    def __init__(self, cfg: ADMConfig = DPS_FFHQ):
        super().__init__()
        self.cfg = cfg
        mc, emb_ch = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def attn(ch: int, size: int) -> list[nn.Module]:
            return [AttentionBlock(ch, cfg.num_head_channels)] if size in cfg.attention_resolutions else []

        ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([_Seq([nn.Conv2d(cfg.in_channels, ch, 3, padding=1)])])
        skips, size = [ch], cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(_Seq([ResBlock(ch, emb_ch, mult * mc, cfg.dropout), *attn(mult * mc, size)]))
                ch = mult * mc
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(_Seq([ResBlock(ch, emb_ch, ch, cfg.dropout, resample="down")]))
                skips.append(ch)
                size //= 2
        self.middle_block = _Seq([ResBlock(ch, emb_ch, ch, cfg.dropout), AttentionBlock(ch, cfg.num_head_channels),
                                  ResBlock(ch, emb_ch, ch, cfg.dropout)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), emb_ch, mult * mc, cfg.dropout)]
                ch = mult * mc
                layers += attn(ch, size)
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, cfg.dropout, resample="up"))
                    size *= 2
                self.output_blocks.append(_Seq(layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels))
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_guided_diffusion(path: str | Path, *, sha256: str | None = None, key: str = "checkpoint",
                          cfg: ADMConfig = DPS_FFHQ, map_location: str | torch.device = "cpu") -> ADMUNet:
    """DPS's ``ffhq_10m.pt`` (or any guided-diffusion checkpoint of architecture ``cfg``) as an
    :class:`ADMUNet` in eval mode: ``torch.load(path, weights_only=True)`` and a *strict*
    ``load_state_dict``. ``sha256`` (optional) must equal the file's hash. The raw network: call
    ``net(x, t)`` with integer timesteps; channels 0-2 are epsilon, 3-5 the learned variance.

    Errors are one line naming ``key`` (the config field) and the file: an absent file says where to
    get it, a hash mismatch gives both hashes, a state dict that does not fit names the first
    missing/unexpected keys.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{key}: ADM checkpoint {str(p)!r} not found; download ffhq_10m.pt from {DPS_FFHQ_URL}")
    if sha256 is not None:
        got = file_sha256(p)
        if got.lower() != str(sha256).lower():
            raise ArtifactError(f"{key}: {str(p)!r} has sha256 {got}, config expects {sha256}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # a corrupt or non-torch file: one line, not a traceback
        raise ArtifactError(f"{key}: cannot read {str(p)!r} as a torch state dict ({type(exc).__name__}: {exc})") \
            from None
    net = ADMUNet(cfg)
    have, want = set(state), set(net.state_dict())
    bad = [f"missing {k}" for k in sorted(want - have)[:3]] + [f"unexpected {k}" for k in sorted(have - want)[:3]]
    if bad:
        raise ArtifactError(f"{key}: {str(p)!r} is not a guided-diffusion ADM of {cfg}: {', '.join(bad)}")
    try:
        net.load_state_dict(state, strict=True)  # shapes
    except RuntimeError as exc:
        raise ArtifactError(f"{key}: {str(p)!r} does not fit the ADM: {str(exc).splitlines()[1].strip()}") from None
    return net.eval()


def state_shapes(net: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every state-dict tensor, in order (the key list of the tests)."""
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


def adm_config(image_size: int = 256, model_channels: int = 128, channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
               **kw) -> ADMConfig:
    """An :class:`ADMConfig` from plain values (small ones for tests)."""
    return ADMConfig(image_size=image_size, model_channels=model_channels, channel_mult=tuple(channel_mult), **kw)


# --- the ADM as a registered network h(x, sigma) of Eq. (26) (Table 5's cost at paper scale) -----------

from emprior.core.registry import option  # noqa: E402
from emprior.nets.build import NETS, int_list, pos_int  # noqa: E402


@dataclass(frozen=True)
class ADMOptions:
    model_channels: int = option(128, minimum=32, doc="base channels (multiple of 32)")
    channel_mult: list[int] = option([1, 1, 2, 2, 4, 4], items={"minimum": 1}, minItems=1,
                                     doc="channel multiplier per level")
    num_res_blocks: int = option(1, minimum=1, doc="residual blocks per level")
    attention_resolutions: list[int] = option([16], items={"minimum": 1}, minItems=1,
                                              doc="feature-map sizes with self-attention")
    num_head_channels: int = option(64, minimum=1, doc="channels per attention head")


class ADMNoiseNet(nn.Module):
    """h(x, sigma) = ADMUNet(x, t(sigma))[:, :C]: the ADM conditioned on the continuous VP timestep whose
    level sqrt((1 - abar_t)/abar_t) is sigma (linear interpolation of log sigma over the 1000 trained
    levels, clamped at the ends). For Table 5's cost and for training an ADM here; the pretrained
    ffhq_10m.pt is used through :class:`emprior.priors.adm.ADMDenoiser` instead (exact timesteps)."""

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        self.net = ADMUNet(cfg)
        self.channels = cfg.in_channels
        from emprior.priors.adm import linear_alphas_cumprod

        abar = torch.as_tensor(linear_alphas_cumprod(), dtype=torch.float64)
        self.register_buffer("log_sigmas", 0.5 * torch.log((1 - abar) / abar), persistent=False)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        ls = torch.log(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)).expand(x.shape[0])
        table = self.log_sigmas.to(x.device)
        i = torch.searchsorted(table, ls.contiguous()).clamp(1, len(table) - 1)
        w = ((ls - table[i - 1]) / (table[i] - table[i - 1])).clamp(0, 1)
        t = (i - 1 + w).to(torch.float32)
        return self.net(x, t)[:, : self.channels]


@NETS.register("adm", ADMOptions)
def build_adm(opts: ADMOptions, x_shape: tuple[int, ...]) -> nn.Module:
    """:class:`ADMNoiseNet` on square (C, S, S) events (C output channels, no learned variance)."""
    if len(x_shape) != 3 or x_shape[1] != x_shape[2]:
        raise ConfigError(f"net config: adm needs square (C, S, S) events, got {x_shape}")
    cfg = ADMConfig(image_size=x_shape[1], in_channels=x_shape[0], out_channels=x_shape[0],
                    model_channels=pos_int(opts.model_channels, "model_channels"),
                    num_res_blocks=pos_int(opts.num_res_blocks, "num_res_blocks"),
                    channel_mult=int_list(opts.channel_mult, "channel_mult"),
                    attention_resolutions=int_list(opts.attention_resolutions, "attention_resolutions"),
                    num_head_channels=pos_int(opts.num_head_channels, "num_head_channels"))
    return ADMNoiseNet(cfg)
