"""``phantom``: varied Shepp-Logan phantoms (the CPU stand-in for fastMRI, Sec. 5.3), float32
(N, 1, size, size) in [-2, 2].

Item i is drawn from its own stream ``default_rng([seed, PHANTOM_STREAM, offset + i])``, so an item does
not depend on ``n`` and held-out phantoms are the items from ``offset`` on (the MRI figures use
``offset = n`` of the training set). Each item, on a 2 size x 2 size grid:

1. scikit-image's Shepp-Logan phantom (nearest-neighbour resized, so its grey levels stay distinct),
   every non-zero grey level v mapped to v * u, u ~ U(0.6, 1.4) drawn per level (random intensities);
2. 1 to 3 added ellipses inside the head (centre, axes, angle, additive intensity +-U(0.1, 0.3));
3. a random affine map: rotation U(-20, 20) degrees, scale U(0.8, 1.05) per axis, shear U(-0.1, 0.1),
   shift U(-0.05, 0.05) of the side, bilinear, zero outside;
4. 2x2 mean pooling to size x size (anti-aliasing), clipped at 0;
5. the fastMRI map of the official DiEM code (experiments/fastmri/data.py:28-30): divide by the
   image's maximum, then 4 x - 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from emprior.core.registry import option
from emprior.data.base import DATASETS, Dataset

PHANTOM_STREAM = 0x5E99  # the phantom generator's stream, beside the experiment seed


@dataclass(frozen=True)
class PhantomOptions:
    n: int = option(256, minimum=1, doc="number of phantoms")
    size: int = option(64, minimum=8, doc="side of the square images")
    offset: int = option(0, minimum=0, doc="index of the first phantom (held-out sets start after n)")


@lru_cache(maxsize=4)
def _base(side: int) -> np.ndarray:
    """Shepp-Logan phantom (values in [0, 1]) resized to side x side with its grey levels kept."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (side, side), order=0, anti_aliasing=False,
                  preserve_range=True).astype(np.float64)


def phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """One varied phantom, float32 (size, size) in [-2, 2] (module docstring, steps 1-5)."""
    from skimage.draw import ellipse
    from skimage.transform import AffineTransform, warp

    side = 2 * size
    base = _base(side)
    x = np.zeros_like(base)
    for level in np.unique(base):  # 1. random intensity per grey level
        if level > 0:
            x[base == level] = level * rng.uniform(0.6, 1.4)
    for _ in range(int(rng.integers(1, 4))):  # 2. added ellipses
        r, c = rng.uniform(0.3, 0.7, size=2) * side
        ar, ac = rng.uniform(0.03, 0.12, size=2) * side
        rr, cc = ellipse(r, c, ar, ac, shape=x.shape, rotation=rng.uniform(-np.pi, np.pi))
        x[rr, cc] += rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3)
    x = np.clip(x, 0.0, None)
    # 3. random affine map about the centre
    centre = np.array([side / 2, side / 2])
    affine = AffineTransform(scale=rng.uniform(0.8, 1.05, size=2), rotation=np.deg2rad(rng.uniform(-20, 20)),
                             shear=rng.uniform(-0.1, 0.1))
    shift = rng.uniform(-0.05, 0.05, size=2) * side
    to_centre = AffineTransform(translation=-centre)
    back = AffineTransform(translation=centre + shift)
    tform = to_centre + affine + back  # output <- input map
    x = warp(x, tform.inverse, order=1, mode="constant", cval=0.0, preserve_range=True)
    # 4. anti-aliased downsampling
    x = np.clip(x.reshape(size, 2, size, 2).mean(axis=(1, 3)), 0.0, None)
    # 5. the official fastMRI map: / max, then 4 x - 2
    peak = x.max()
    x = x / peak if peak > 0 else x
    return (4.0 * x - 2.0).astype(np.float32)


def load_phantoms(n: int, size: int = 64, seed: int = 0, offset: int = 0) -> np.ndarray:
    """Phantoms offset .. offset + n - 1 as float32 (n, 1, size, size) in [-2, 2]."""
    out = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        out[i, 0] = phantom(size, np.random.default_rng([int(seed), PHANTOM_STREAM, int(offset) + i]))
    return out


@DATASETS.register("phantom", PhantomOptions)
class Phantom(Dataset):
    """Varied Shepp-Logan phantoms in [-2, 2] (generated; CPU stand-in for fastMRI knee slices)."""

    @classmethod
    def load(cls, opts: PhantomOptions, seed: int) -> np.ndarray:
        return load_phantoms(int(opts.n), int(opts.size), seed, int(opts.offset))

    @classmethod
    def shape(cls, opts: PhantomOptions, seed: int) -> tuple[int, ...]:
        return (int(opts.n), 1, int(opts.size), int(opts.size))
