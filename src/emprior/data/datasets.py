"""Clean data sets x ~ p(x): generated, shipped with a package, or read from pre-downloaded files.

Every loader returns a float32 array of shape (N, *event_shape) in the value range the reference
code trains on:

==========  ========================  ==========  ====================================================
name        shape                     range       source
==========  ========================  ==========  ====================================================
manifold    (n, dim)                  standardised  :class:`emprior.data.randman.RandomManifold` (Sec. 5.1)
digits      (1797, 1, 8, 8)           [-2, 2]     scikit-learn 8x8 digits (ships with the package)
cifar10     (50000|10000, 3, 32, 32)  [-2, 2]     CIFAR-10 python version (Sec. 5.2, official DiEM range)
ffhq        (n, 3, size, size)        [-1, 1]     folder of FFHQ PNGs (DPS model range, Table 4)
fastmri     (N, 1, 320, 320)          [-2, 2]     fastMRI single-coil knee .h5 (Sec. 5.3)
==========  ========================  ==========  ====================================================

Only CIFAR-10 can be fetched by :func:`download` (a public URL with a published md5); FFHQ and
fastMRI require accepting a licence, so their loaders say where to get them. Every failure is a
one-line :class:`~emprior.core.errors.DataError` naming the file and what was expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from emprior.core.errors import ConfigError, DataError
from emprior.core.rng import numpy_rng

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

FFHQ_HELP = ("download the FFHQ images (https://github.com/NVlabs/ffhq-dataset; the DPS/MMPS benchmarks use "
             "the first 100 images at 256x256, 00000.png ...) into that folder")
FASTMRI_HELP = ("request the single-coil knee data at https://fastmri.med.nyu.edu/ and extract "
                "knee_singlecoil_train.tar.xz (*.h5 files) into that folder")

_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Download with checksum
# ---------------------------------------------------------------------------------------------

def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file (``"md5"`` or ``"sha256"``), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    expected = {}
    for name, value in (("sha256", sha256), ("md5", md5)):
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ValueError(f"download: {name} must be a hex string, got {value!r}")
            expected[name] = value.lower()
    return expected


def _check_digests(path: Path, expected: dict[str, str]) -> None:
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want:
            raise DataError(f"{path}: {algorithm} checksum mismatch (expected {want}, got {got}); "
                            f"the file is corrupt or not the expected one: delete it and download again")


def download(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` with urllib and verify its checksum(s); return ``dest``.

    The bytes go to a temporary file next to ``dest``, hashed on the fly, and are renamed onto
    ``dest`` only once the digests match, so an interrupted or corrupted download never leaves a
    ``dest`` behind. An existing ``dest`` whose checksums match (or for which none is given) is kept
    without downloading again.
    """
    dest = Path(dest)
    expected = _expected_digests(sha256, md5)
    if dest.is_file():
        with contextlib.suppress(DataError):
            _check_digests(dest, expected)
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    hashes = {name: hashlib.new(name) for name in expected}
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise DataError(f"download of {url} to {dest} failed: {str(reason).splitlines()[0]}") from None
        for name, h in hashes.items():
            if h.hexdigest() != expected[name]:
                raise DataError(f"download of {url} to {dest}: {name} checksum mismatch "
                                f"(expected {expected[name]}, got {h.hexdigest()})")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def download_cifar10(root: str | Path) -> Path:
    """Download ``cifar-10-python.tar.gz`` (md5-checked) into ``root``; return the archive's path."""
    return download(CIFAR10_URL, Path(root) / CIFAR10_ARCHIVE, md5=CIFAR10_MD5)


# ---------------------------------------------------------------------------------------------
# Generated and packaged data
# ---------------------------------------------------------------------------------------------

def make_manifold(n: int, dim: int, seed: int, *, stream: str = "train", n_freq: int = 3,
                  smoothness: float = 1.0, noise_std: float = 0.0, scaling: str = "standard") -> np.ndarray:
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


def load_digits() -> np.ndarray:
    """scikit-learn's 1797 8x8 digits (integers 0..16) as float32 (1797, 1, 8, 8) in [-2, 2].

    x = 4 v / 16 - 2, the same [-2, 2] convention as the official DiEM image experiments.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    images = _sk_load_digits().images  # (1797, 8, 8), float64 in [0, 16]
    return (images[:, None] / 4.0 - 2.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles)
# ---------------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays: the CIFAR pickles need nothing else, and an
    arbitrary ``find_class`` would let a tampered file run code."""

    _ALLOWED: ClassVar[dict[tuple[str, str], tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(*target)


def _read_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch: dict with b"data" uint8 (n, 3072) (R, G, B planes of 32x32) and b"labels"."""
    try:
        # encoding="bytes": the official files are Python 2 pickles with byte-string keys.
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises many exception types
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{where}: corrupt CIFAR-10 pickle ({detail})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{where}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels', got {keys})")
    data = batch[b"data"]
    labels = np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{where}: b'data' has shape {shape} and dtype {dtype}, expected uint8 (n, 3072)")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{where}: b'labels' has shape {labels.shape}, expected ({data.shape[0]},)")
    return data, labels


def _cifar_batches_from_tar(archive: Path, names: list[str]) -> dict[str, bytes]:
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        # Streaming mode: a single pass over the gzip stream, no backward seeks.
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    found[wanted[member.name]] = f.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: corrupt or truncated archive ({str(exc).splitlines()[0]})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{archive}: archive has no {CIFAR10_FOLDER}/{missing[0]}")
    return found


def load_cifar10(root: str | Path, split: str = "train", md5: str | None = CIFAR10_MD5) -> np.ndarray:
    """CIFAR-10 images as float32 (N, 3, 32, 32) in [-2, 2] (x = 4 v / 255 - 2), in file order.

    Looks in ``root`` for the extracted ``cifar-10-batches-py/`` folder (or the batch files directly
    in ``root``), else for ``cifar-10-python.tar.gz``, whose md5 is checked against ``md5`` (the
    official digest; ``None`` skips the check, e.g. for test archives) and which is read in place.
    ``split`` is ``"train"`` (data_batch_1..5, 50 000 images) or ``"test"`` (test_batch, 10 000).
    """
    if split not in _CIFAR10_BATCHES:
        raise ValueError(f"load_cifar10: split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    names = _CIFAR10_BATCHES[split]
    folder = next((d for d in (root / CIFAR10_FOLDER, root) if (d / names[0]).is_file()), None)
    archive = root / CIFAR10_ARCHIVE
    raws: dict[str, tuple[bytes, str]] = {}
    if folder is not None:
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path}: missing CIFAR-10 batch file (re-extract {CIFAR10_ARCHIVE})")
            raws[name] = (path.read_bytes(), str(path))
    elif archive.is_file():
        if md5 is not None:
            got = file_digest(archive, "md5")
            if got != md5.lower():
                raise DataError(f"{archive}: md5 checksum mismatch (expected {md5.lower()}, got {got}); "
                                f"delete it and download again from {CIFAR10_URL}")
        for name, raw in _cifar_batches_from_tar(archive, names).items():
            raws[name] = (raw, f"{archive}:{CIFAR10_FOLDER}/{name}")
    else:
        raise DataError(f"CIFAR-10 not found at {root}: download {CIFAR10_ARCHIVE} from "
                        f"https://www.cs.toronto.edu/~kriz/cifar.html into that folder")
    data = [_read_cifar_batch(*raws[name])[0] for name in names]
    images = np.concatenate(data).reshape(-1, 3, 32, 32)
    return (images.astype(np.float32) * np.float32(4.0 / 255.0) - np.float32(2.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# FFHQ (folder of PNGs) and fastMRI (HDF5)
# ---------------------------------------------------------------------------------------------

def _square(h: int, w: int) -> tuple[int, int, int, int]:
    """Centre crop box (top, left, height, width) of the largest square inside an h x w image."""
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


def load_ffhq(folder: str | Path, n: int = 100, size: int = 256) -> np.ndarray:
    """The first ``n`` PNGs of ``folder`` (sorted by relative path, sub-folders included) as float32
    (n, 3, size, size) in [-1, 1] (x = 2 v / 255 - 1, the DPS model's range).

    Images are centre-cropped to a square if needed and resized with PIL's bicubic filter (which
    low-pass filters when shrinking, e.g. FFHQ 1024 -> 256).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"load_ffhq: n must be an integer >= 1, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"load_ffhq: size must be an integer >= 1, got {size!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"FFHQ not found at {folder}: {FFHQ_HELP}")
    files = sorted(folder.rglob("*.png"), key=lambda p: p.relative_to(folder).as_posix())
    if len(files) < n:
        raise DataError(f"{folder}: found {len(files)} PNG images, {n} needed: {FFHQ_HELP}")
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i, path in enumerate(files[:n]):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                top, left, h, w = _square(img.height, img.width)
                img = img.crop((left, top, left + w, top + h))
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BICUBIC)
                pixels = np.asarray(img, dtype=np.float32)  # (size, size, 3) in [0, 255]
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable PNG ({str(exc).splitlines()[0]})") from None
        out[i] = pixels.transpose(2, 0, 1) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return out


def _resize_square(x: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (n, h, w) slices to a square and resize them to size x size (antialiased bilinear,
    a convex combination of pixels, so the value range is preserved)."""
    top, left, h, w = _square(x.shape[-2], x.shape[-1])
    x = x[:, top:top + h, left:left + w]
    if (h, w) == (size, size):
        return x
    import torch

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


def load_fastmri(folder: str | Path, slices: tuple[int, int] | list[int] = (10, 41), size: int = 320,
                 key: str = "reconstruction_esc", normalize: str = "slice") -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Config dispatcher
# ---------------------------------------------------------------------------------------------

_KEYS = {
    "manifold": {"n", "dim", "n_freq", "smoothness", "noise_std", "scaling"},
    "digits": {"n"},
    "cifar10": {"n", "root", "split"},
    "ffhq": {"n", "root", "size"},
    "fastmri": {"n", "root", "slices", "size"},
}


def _require(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"dataset.{key}: required for dataset '{cfg['name']}'")
    return cfg[key]


def load_dataset(cfg: dict[str, Any], seed: int) -> np.ndarray:
    """Load the data set described by a config's ``dataset`` mapping, float32 (N, *event_shape).

    Examples: ``{"name": "digits"}``, ``{"name": "manifold", "n": 4096, "dim": 5}``,
    ``{"name": "cifar10", "root": "data/cifar10", "split": "train"}``,
    ``{"name": "ffhq", "root": "data/ffhq", "n": 100, "size": 256}``,
    ``{"name": "fastmri", "root": "data/fastmri", "slices": [10, 41]}``.
    ``n`` keeps the first n items (for ``manifold`` it is the number of points drawn, for ``ffhq``
    the number of images read); ``seed`` only matters for the manifold.
    """
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError(f"dataset: expected a mapping with a 'name', got {cfg!r}")
    name = cfg["name"]
    if name not in _KEYS:
        raise ConfigError(f"dataset.name: unknown dataset {name!r} (expected one of {sorted(_KEYS)})")
    unknown = sorted(set(cfg) - _KEYS[name] - {"name"})
    if unknown:
        raise ConfigError(f"dataset.{unknown[0]}: not a key of dataset '{name}' (allowed: {sorted(_KEYS[name])})")
    n = cfg.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ConfigError(f"dataset.n: must be an integer >= 1, got {n!r}")

    if name == "manifold":
        kw = {k: cfg[k] for k in ("n_freq", "smoothness", "noise_std", "scaling") if k in cfg}
        return make_manifold(int(_require(cfg, "n")), int(_require(cfg, "dim")), seed, **kw)
    if name == "digits":
        x = load_digits()
    elif name == "cifar10":
        x = load_cifar10(_require(cfg, "root"), split=cfg.get("split", "train"))
    elif name == "ffhq":
        return load_ffhq(_require(cfg, "root"), n=int(n) if n is not None else 100, size=int(cfg.get("size", 256)))
    else:
        x = load_fastmri(_require(cfg, "root"), slices=tuple(cfg.get("slices", (10, 41))),
                         size=int(cfg.get("size", 320)))
    if n is not None:
        if n > len(x):
            raise ConfigError(f"dataset.n: {n} requested but dataset '{name}' has only {len(x)} items")
        x = x[:n]
    return np.ascontiguousarray(x)


def prepare_dataset(cfg: dict[str, Any]) -> Path | None:
    """Make sure a dataset's files are present before the DAG runs (login-node rule).

    Downloads CIFAR-10 if neither the archive nor the extracted folder is in ``root``; checks that
    the FFHQ / fastMRI folders exist (they need a licence: no automatic download). Returns the data
    folder, or ``None`` for data that is generated or ships with a package.
    """
    name = cfg.get("name")
    if name in ("manifold", "digits"):
        return None
    root = Path(_require(cfg, "root"))
    if name == "cifar10":
        if not any((d / "data_batch_1").is_file() for d in (root / CIFAR10_FOLDER, root)):
            download_cifar10(root)
        return root
    if name == "ffhq":
        if not root.is_dir() or not any(root.rglob("*.png")):
            raise DataError(f"FFHQ not found at {root}: {FFHQ_HELP}")
        return root
    if name == "fastmri":
        if not root.is_dir() or not any(root.glob("*.h5")):
            raise DataError(f"fastMRI not found at {root}: {FASTMRI_HELP}")
        return root
    raise ConfigError(f"dataset.name: unknown dataset {name!r} (expected one of {sorted(_KEYS)})")
