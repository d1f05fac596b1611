"""``fastmri``: fastMRI single-coil knee slices (Sec. 5.3), float32 (N, 1, size, size) in [-2, 2].

fastMRI requires accepting a licence, so it is never downloaded: the loader says where to get it.
"""

from __future__ import annotations

import io
import lzma
import tarfile
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emprior.core.errors import DataError
from emprior.core.registry import option
from emprior.data.base import DATASETS, Dataset, first_n, square_box

FASTMRI_HELP = ("request the single-coil knee data at https://fastmri.med.nyu.edu/ and put "
                "knee_singlecoil_train.tar.xz (or its extracted *.h5 files) into that folder")
NORMALIZE = ("max", "slice", "scan")
# slices 10..40 of each scan: the paper's "between the 10th and 40th"
DEFAULT_SLICES = (10, 41)
# training images of the paper (diem-neurips Sec. 5.3: slices 10-40 of the single-coil knee train volumes)
PAPER_TRAIN_SLICES = 24853


@dataclass(frozen=True)
class FastMRIOptions:
    root: str = option(doc="folder of fastMRI *.h5 files")
    n: int | None = option(None, minimum=1, doc="keep the first n items (default: all)")
    slices: list[int] = option(list(DEFAULT_SLICES), items={"minimum": 0}, minItems=2, maxItems=2,
                               doc="[start, stop) slice range of every scan")
    size: int = option(320, minimum=1, doc="side of the square slices (resized if not already; official: 320)")
    key: str = option("reconstruction_rss", doc="image dataset of each volume (official: reconstruction_rss)")
    normalize: str = option("max", enum=list(NORMALIZE),
                            doc="max: / max of the kept slices of the volume, then 4x - 2 (official); "
                                "slice / scan: min-max per slice / per volume")


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


def _check_volume(volume: Any, key: str, where: str) -> None:
    if not isinstance(volume, h5py.Dataset):
        raise DataError(f"{where}: no dataset '{key}'")
    if volume.ndim != 3 or min(volume.shape[1:]) < 1:
        raise DataError(f"{where}: dataset '{key}' has shape {volume.shape}, expected (slices, height, width)")


def _read_volume(f: h5py.File, key: str, start: int, stop: int, where: str) -> np.ndarray:
    """``f[key][start:stop]`` as float32 (slices, H, W), checked (one-line DataErrors)."""
    if key not in f:
        raise DataError(f"{where}: no dataset '{key}' (has {sorted(f.keys())})")
    _check_volume(f[key], key, where)
    volume = np.asarray(f[key][start:stop], dtype=np.float32)
    if not np.all(np.isfinite(volume)):
        raise DataError(f"{where}: dataset '{key}' contains NaN or Inf")
    return volume


def _normalise(volume: np.ndarray, size: int, normalize: str) -> np.ndarray:
    volume = _resize_square(volume, size)
    if normalize == "max":
        # official DiEM (experiments/fastmri/data.py:28-30): x / x.max() over the kept slices, then 4 x - 2
        peak = float(volume.max())
        return (4.0 * (volume / (peak if peak > 0 else 1.0)) - 2.0).astype(np.float32)
    return _minmax(volume, (1, 2) if normalize == "slice" else (0, 1, 2))


ARCHIVE_SUFFIXES = (".tar", ".tar.xz", ".tar.gz", ".tgz", ".tar.bz2")


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def _archive_volumes(archives: list[Path], key: str, start: int, stop: int
                     ) -> Iterator[tuple[str, np.ndarray]]:
    """(member name, slices) of every ``*.h5`` member of the archives, read as a stream (tar.xz has no
    random access), as the official export (experiments/fastmri/data.py:19-27)."""
    for archive in archives:
        try:
            with tarfile.open(archive, mode="r|*") as tar:
                for member in tar:
                    if not (member.isfile() and member.name.endswith(".h5")):
                        continue
                    where = f"{archive}:{member.name}"
                    data = tar.extractfile(member).read()
                    try:
                        with h5py.File(io.BytesIO(data), "r") as f:
                            yield member.name, _read_volume(f, key, start, stop, where)
                    except OSError as exc:
                        raise DataError(f"{where}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None
        except (tarfile.TarError, EOFError, lzma.LZMAError) as exc:
            raise DataError(f"{archive}: unreadable tar archive ({exc})") from None


def load_fastmri(root: str | Path, slices: tuple[int, int] | list[int] = DEFAULT_SLICES,
                 size: int = FastMRIOptions.size, key: str = FastMRIOptions.key,
                 normalize: str = FastMRIOptions.normalize) -> np.ndarray:
    """fastMRI single-coil knee slices as float32 (N, 1, size, size) in [-2, 2] (Sec. 5.3).

    ``root``: a folder of extracted ``*.h5`` volumes (sorted by name), a folder of the official tar
    archives (``knee_singlecoil_train.tar.xz``; members sorted by name), or one archive. Of each volume
    it takes ``f[key][slices[0]:slices[1]]`` (default ``reconstruction_rss[10:41]``, the official
    code's), resizes them to ``size`` if they are not size x size (the official code does not: 320) and
    maps them to [-2, 2]: ``normalize="max"`` (default, the official code) divides by the maximum of
    the kept slices of the volume, then 4 x - 2 (so the volume's brightest kept pixel is 2, the
    background about -2); ``"slice"`` / ``"scan"`` min-max map each slice / the kept slices.
    The file attributes (``max``, ``norm``, ``acquisition``) are not used, as by the official code.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"load_fastmri: normalize must be one of {NORMALIZE}, got {normalize!r}")
    try:
        start, stop = (int(s) for s in slices)
    except (TypeError, ValueError):
        raise ValueError(f"load_fastmri: slices must be a pair (start, stop), got {slices!r}") from None
    if not 0 <= start < stop:
        raise ValueError(f"load_fastmri: slices must satisfy 0 <= start < stop, got {slices!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"load_fastmri: size must be an integer >= 1, got {size!r}")
    root = Path(root)
    if _is_archive(root):
        return _stack(sorted(_archive_volumes([root], key, start, stop)), root, key, start, stop, size, normalize)
    if not root.is_dir():
        raise DataError(f"fastMRI not found at {root}: {FASTMRI_HELP}")
    files = sorted(root.glob("*.h5"))
    if not files:
        archives = sorted(p for p in root.iterdir() if _is_archive(p))
        if not archives:
            raise DataError(f"{root}: no fastMRI *.h5 files or tar archives: {FASTMRI_HELP}")
        return _stack(sorted(_archive_volumes(archives, key, start, stop)), root, key, start, stop, size,
                      normalize)

    # Two passes (count, then fill) so the full set (~25k x 320 x 320) is allocated once.
    counts = []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise DataError(f"{path}: no dataset '{key}' (has {sorted(f.keys())})")
                _check_volume(f[key], key, str(path))
                counts.append(len(range(*slice(start, stop).indices(f[key].shape[0]))))
        except OSError as exc:
            raise DataError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None
    total = sum(counts)
    if total == 0:
        raise DataError(f"{root}: no scan has slices {start}..{stop - 1} in '{key}'")
    out = np.empty((total, 1, size, size), dtype=np.float32)
    row = 0
    for path, count in zip(files, counts):
        if count == 0:
            continue
        try:
            with h5py.File(path, "r") as f:
                volume = _read_volume(f, key, start, stop, str(path))
        except OSError as exc:
            raise DataError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None
        out[row:row + count, 0] = _normalise(volume, size, normalize)
        row += count
    return out


def _stack(volumes: list[tuple[str, np.ndarray]], root: Path, key: str, start: int, stop: int, size: int,
           normalize: str) -> np.ndarray:
    """The archives' volumes (sorted by member name) in one array, each freed once copied."""
    total = sum(len(v) for _, v in volumes)
    if total == 0:
        raise DataError(f"{root}: no scan has slices {start}..{stop - 1} in '{key}'")
    out = np.empty((total, 1, size, size), dtype=np.float32)
    row = 0
    volumes.reverse()
    while volumes:
        _, volume = volumes.pop()
        if len(volume):
            out[row:row + len(volume), 0] = _normalise(volume, size, normalize)
            row += len(volume)
    return out


@DATASETS.register("fastmri", FastMRIOptions)
class FastMRI(Dataset):
    """fastMRI single-coil knee slices in [-2, 2] (pre-downloaded: licence)."""

    @classmethod
    def load(cls, opts: FastMRIOptions, seed: int) -> np.ndarray:
        x = load_fastmri(opts.root, slices=tuple(opts.slices), size=int(opts.size), key=opts.key,
                         normalize=opts.normalize)
        return first_n(x, opts.n, "fastmri")

    @classmethod
    def shape(cls, opts: FastMRIOptions, seed: int) -> tuple[int, ...]:
        """Counted from the *.h5 headers when present; else the paper's 24 853 training slices (the disk
        plan runs before the data are on the cluster)."""
        root = Path(opts.root)
        files = sorted(root.glob("*.h5")) if root.is_dir() else []
        if files:
            start, stop = opts.slices
            n = 0
            for path in files:
                with h5py.File(path, "r") as f:
                    n += len(range(*slice(start, stop).indices(f[opts.key].shape[0]))) if opts.key in f else 0
        else:
            n = PAPER_TRAIN_SLICES
        return (min(n, opts.n or n), 1, int(opts.size), int(opts.size))

    @classmethod
    def prepare(cls, opts: FastMRIOptions) -> Path:
        """Check that the folder holds *.h5 scans or tar archives, or is an archive (no automatic download)."""
        root = Path(opts.root)
        if _is_archive(root):
            return root
        if not root.is_dir() or not (any(root.glob("*.h5")) or any(_is_archive(p) for p in root.iterdir())):
            raise DataError(f"fastMRI not found at {root}: {FASTMRI_HELP}")
        return root
