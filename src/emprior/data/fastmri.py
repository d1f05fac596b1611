"""``fastmri``: fastMRI single-coil knee slices (Sec. 5.3), float32 (N, 1, size, size) in [-2, 2].

fastMRI requires accepting a licence, so it is never downloaded: the loader says where to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from emprior.core.errors import DataError
from emprior.core.registry import option
from emprior.data.base import DATASETS, Dataset, first_n, square_box

FASTMRI_HELP = ("request the single-coil knee data at https://fastmri.med.nyu.edu/ and extract "
                "knee_singlecoil_train.tar.xz (*.h5 files) into that folder")
# slices 10..40 of each scan: the paper's "between the 10th and 40th"
DEFAULT_SLICES = (10, 41)


@dataclass(frozen=True)
class FastMRIOptions:
    root: str = option(doc="folder of fastMRI *.h5 files")
    n: int | None = option(None, minimum=1, doc="keep the first n items (default: all)")
    slices: list[int] = option(list(DEFAULT_SLICES), items={"minimum": 0}, minItems=2, maxItems=2,
                               doc="[start, stop) slice range of every scan")
    size: int = option(320, minimum=1, doc="side of the square slices after resizing")


def _resize_square(x: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (n, h, w) slices to a square and resize them to size x size (antialiased bilinear,
    a convex combination of pixels, so the value range is preserved)."""
    top, left, h, w = square_box(x.shape[-2], x.shape[-1])
    x = x[:, top:top + h, left:left + w]
    if (h, w) == (size, size):
        return x
    import torch  # lazy: only resizing needs it

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return t[:, 0].numpy()


def _minmax(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Affine map of each slice (or scan) onto [-2, 2]: 4 (x - min) / (max - min) - 2."""
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    # A constant slice maps to -2 instead of dividing by zero.
    span = np.where(hi > lo, hi - lo, 1.0)
    return (4.0 * (x - lo) / span - 2.0).astype(np.float32)


def load_fastmri(folder: str | Path, slices: tuple[int, int] | list[int] = DEFAULT_SLICES,
                 size: int = FastMRIOptions.size, key: str = "reconstruction_esc",
                 normalize: str = "slice") -> np.ndarray:
    """fastMRI single-coil knee slices as float32 (N, 1, size, size) in [-2, 2] (Sec. 5.3).

    Reads every ``*.h5`` of ``folder`` (sorted names), takes ``f[key][slices[0]:slices[1]]`` of each
    scan (default: slices 10..40, the paper's "between the 10th and 40th"), resizes to ``size`` if
    needed and min-max normalises to [-2, 2], per slice (``normalize="slice"``) or per scan
    (``"scan"``, the paper's wording). Note: the official DiEM code uses ``reconstruction_rss[10:40]``
    divided by the scan's maximum; pass ``key``/``slices``/``normalize`` to reproduce that variant.
    """
    if normalize not in ("slice", "scan"):
        raise ValueError(f"load_fastmri: normalize must be 'slice' or 'scan', got {normalize!r}")
    try:
        start, stop = (int(s) for s in slices)
    except (TypeError, ValueError):
        raise ValueError(f"load_fastmri: slices must be a pair (start, stop), got {slices!r}") from None
    if not 0 <= start < stop:
        raise ValueError(f"load_fastmri: slices must satisfy 0 <= start < stop, got {slices!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"load_fastmri: size must be an integer >= 1, got {size!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"fastMRI not found at {folder}: {FASTMRI_HELP}")
    files = sorted(folder.glob("*.h5"))
    if not files:
        raise DataError(f"{folder}: no fastMRI *.h5 files: {FASTMRI_HELP}")

    def open_volume(f: h5py.File, path: Path) -> h5py.Dataset:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise DataError(f"{path}: no dataset '{key}' (has {sorted(f.keys())})")
        volume = f[key]
        if volume.ndim != 3 or min(volume.shape[1:]) < 1:
            raise DataError(f"{path}: dataset '{key}' has shape {volume.shape}, expected (slices, height, width)")
        return volume

    # Two passes (count, then fill) so the full set (~25k x 320 x 320) is allocated once.
    counts = []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                counts.append(len(range(*slice(start, stop).indices(open_volume(f, path).shape[0]))))
        except OSError as exc:
            raise DataError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None
    total = sum(counts)
    if total == 0:
        raise DataError(f"{folder}: no scan has slices {start}..{stop - 1} in '{key}'")
    out = np.empty((total, 1, size, size), dtype=np.float32)
    row = 0
    for path, count in zip(files, counts):
        if count == 0:
            continue
        try:
            with h5py.File(path, "r") as f:
                volume = np.asarray(open_volume(f, path)[start:stop], dtype=np.float32)
        except OSError as exc:
            raise DataError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None
        if not np.all(np.isfinite(volume)):
            raise DataError(f"{path}: dataset '{key}' contains NaN or Inf")
        volume = _resize_square(volume, size)
        out[row:row + count, 0] = _minmax(volume, (1, 2) if normalize == "slice" else (0, 1, 2))
        row += count
    return out


@DATASETS.register("fastmri", FastMRIOptions)
class FastMRI(Dataset):
    """fastMRI single-coil knee slices in [-2, 2] (pre-downloaded: licence)."""

    @classmethod
    def load(cls, opts: FastMRIOptions, seed: int) -> np.ndarray:
        x = load_fastmri(opts.root, slices=tuple(opts.slices), size=int(opts.size))
        return first_n(x, opts.n, "fastmri")

    @classmethod
    def prepare(cls, opts: FastMRIOptions) -> Path:
        """Check that the folder holds *.h5 scans (no automatic download)."""
        root = Path(opts.root)
        if not root.is_dir() or not any(root.glob("*.h5")):
            raise DataError(f"fastMRI not found at {root}: {FASTMRI_HELP}")
        return root
