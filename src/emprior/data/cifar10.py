"""``cifar10``: CIFAR-10 python version (Sec. 5.2), float32 (50000|10000, 3, 32, 32) in [-2, 2].

The only data set fetched automatically (a public URL with a published md5). The pickles are read
by an unpickler that can only rebuild numpy arrays, straight from the archive if it is not extracted.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from emprior.core.errors import DataError
from emprior.core.registry import option
from emprior.data.base import DATASETS, Dataset, first_n
from emprior.data.download import download, file_digest

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@dataclass(frozen=True)
class Cifar10Options:
    root: str = option(doc="folder with cifar-10-batches-py/ or cifar-10-python.tar.gz")
    n: int | None = option(None, minimum=1, doc="keep the first n items (default: all)")
    split: Literal["train", "test"] = option("train", doc="data_batch_1..5 (50 000) or test_batch (10 000)")


def download_cifar10(root: str | Path) -> Path:
    """Download ``cifar-10-python.tar.gz`` (md5-checked) into ``root``; return the archive's path."""
    return download(CIFAR10_URL, Path(root) / CIFAR10_ARCHIVE, md5=CIFAR10_MD5)


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


def load_cifar10(root: str | Path, split: str = Cifar10Options.split, md5: str | None = CIFAR10_MD5) -> np.ndarray:
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


@DATASETS.register("cifar10", Cifar10Options)
class Cifar10(Dataset):
    """CIFAR-10 python version in [-2, 2] (official DiEM range)."""

    @classmethod
    def load(cls, opts: Cifar10Options, seed: int) -> np.ndarray:
        return first_n(load_cifar10(opts.root, split=opts.split), opts.n, "cifar10")

    @classmethod
    def shape(cls, opts: Cifar10Options, seed: int) -> tuple[int, ...]:
        n = 10000 * len(_CIFAR10_BATCHES[opts.split])
        return (min(n, opts.n or n), 3, 32, 32)

    @classmethod
    def prepare(cls, opts: Cifar10Options) -> Path:
        """Download the archive unless the extracted batches are in ``root`` (an archive already there is
        kept if its md5 matches)."""
        root = Path(opts.root)
        if not any((d / "data_batch_1").is_file() for d in (root / CIFAR10_FOLDER, root)):
            download_cifar10(root)
        return root
