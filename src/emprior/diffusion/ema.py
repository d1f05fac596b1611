"""Exponential moving average of a model's parameters and buffers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of a model's parameters::

        shadow <- decay * shadow + (1 - decay) * param      (after every optimiser step)

    Floating-point buffers are averaged the same way; other buffers are copied. ``copy_to`` writes
    the averages into a model (e.g. a copy used for sampling).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in self._tensors(model)}
        self._pairs: tuple | None = None

    @staticmethod
    def _tensors(model: nn.Module) -> Iterable[tuple[str, Tensor]]:
        yield from model.named_parameters()
        yield from model.named_buffers()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # The (shadow, tensor) pairing is built once per model: walking the module tree every step
        # costs several % of a small network's training step.
        if self._pairs is None or self._pairs[0] is not model:
            floats, values, others = [], [], []
            for name, value in self._tensors(model):
                if name not in self.shadow:
                    raise KeyError(f"EMA.update: model has tensor {name!r} that the EMA was not built with")
                avg = self.shadow[name]
                if avg.is_floating_point():
                    floats.append(avg)
                    values.append(value.detach())
                else:
                    others.append((avg, value))
            self._pairs = (model, floats, values, others)
        _, floats, values, others = self._pairs
        if floats:  # one fused kernel over all tensors: shadow + (1 - decay) (param - shadow)
            torch._foreach_lerp_(floats, values, 1 - self.decay)
        for avg, value in others:
            avg.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, value in self._tensors(model):
            if name not in self.shadow:
                raise KeyError(f"EMA.copy_to: model has tensor {name!r} that the EMA was not built with")
            value.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA.load_state_dict: missing tensor {min(missing)!r}")
        self.decay = float(state["decay"])
        for k, v in state["shadow"].items():
            if k in self.shadow:
                self.shadow[k].copy_(v)
