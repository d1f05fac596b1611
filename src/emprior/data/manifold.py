"""``manifold``: points on a random smooth 1-d manifold in R^dim (Sec. 4.2 / 5.1), float32 (n, dim).

The curve is :class:`emprior.data.randman.RandomManifold`; ``scaling="standard"`` gives every
coordinate zero mean and unit variance, ``"minmax"`` maps its range onto [-2, 2] (official DiEM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from emprior.core.registry import option
from emprior.core.rng import numpy_rng
from emprior.data.base import DATASETS, Dataset


@dataclass(frozen=True)
class ManifoldOptions:
    n: int = option(minimum=1, doc="number of points drawn")
    dim: int = option(minimum=1, doc="embedding dimension")
    n_freq: int = option(3, minimum=1, doc="sinusoids K per coordinate")
    smoothness: float = option(1.0, minimum=0, doc="amplitude decay exponent alpha (k^-alpha)")
    noise_std: float = option(0.0, minimum=0, doc="isotropic Gaussian noise added to the points")
    scaling: Literal["standard", "minmax"] = option("standard", doc="per-coordinate standardisation")


def make_manifold(n: int, dim: int, seed: int, *, stream: str = "train", n_freq: int = ManifoldOptions.n_freq,
                  smoothness: float = ManifoldOptions.smoothness, noise_std: float = ManifoldOptions.noise_std,
                  scaling: str = ManifoldOptions.scaling) -> np.ndarray:
    """``n`` points on a random smooth 1-d manifold in R^dim (Sec. 5.1), float32 (n, dim).

    The manifold's shape depends only on (``seed``, ``dim``, ``n_freq``, ``smoothness``); the points
    are drawn from a separate stream, so ``stream="reference"`` gives fresh points on the same
    manifold (e.g. a ground-truth set for the Sinkhorn divergence).
    """
    from emprior.data.randman import RandomManifold

    manifold = RandomManifold(dim, numpy_rng(seed, "manifold", "shape"), n_freq=n_freq, smoothness=smoothness,
                              scaling=scaling)
    x = manifold.sample(n, numpy_rng(seed, "manifold", "points", stream), noise_std=noise_std)
    return x.astype(np.float32)


@DATASETS.register("manifold", ManifoldOptions)
class Manifold(Dataset):
    """Random smooth 1-d manifold in R^dim (generated from the seed)."""

    @classmethod
    def load(cls, opts: ManifoldOptions, seed: int) -> np.ndarray:
        return make_manifold(int(opts.n), int(opts.dim), seed, n_freq=opts.n_freq, smoothness=opts.smoothness,
                             noise_std=opts.noise_std, scaling=opts.scaling)

    @classmethod
    def shape(cls, opts: ManifoldOptions, seed: int) -> tuple[int, ...]:
        return (int(opts.n), int(opts.dim))
