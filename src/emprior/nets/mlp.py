"""``mlp``: the low-dimensional manifold network of Table 2 (Sec. 5.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emprior.core.registry import option
from emprior.diffusion.schedule import batch_sigma
from emprior.nets.build import NETS, int_list, pos_int
from emprior.nets.embedding import noise_embedding


@dataclass(frozen=True)
class MLPOptions:
    hidden: list[int] = option([256, 256, 256], items={"minimum": 1}, minItems=1, doc="hidden layer widths")
    emb_features: int = option(64, minimum=1, doc="size of the noise embedding")


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


@NETS.register("mlp", MLPOptions)
def build_mlp(opts: MLPOptions, x_shape: tuple[int, ...]) -> nn.Module:
    """:class:`MLP` over prod(x_shape) features."""
    return MLP(math.prod(x_shape), hidden=int_list(opts.hidden, "hidden"),
               emb_features=pos_int(opts.emb_features, "emb_features"))
