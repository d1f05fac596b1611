"""Seeded randomness: every rule, shard, block and iteration derives its own seed from the base seed.

Seeds are hashes of a path of keys, so they do not depend on how work is split (shard count) or on
the order in which jobs run.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported on use: jobs that only move arrays (gather) never load it
    import torch


def derive_seed(base: int, *keys: object) -> int:
    """A 63-bit seed from ``base`` and a path of keys, e.g. ``derive_seed(0, "digits", "estep", 3)``."""
    text = "/".join([str(int(base))] + [str(k) for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def torch_generator(base: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded by :func:`derive_seed` (a CUDA stream differs from the CPU one)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(base, *keys))
    return g


def numpy_rng(base: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(base, *keys))
