"""How arrays are laid out in HDF5 artifacts: chunked, compressed, and (opt-in) stored in float16.

Every dataset that :func:`emprior.core.artifacts.save_h5` writes goes through :func:`dataset_kwargs`:

* chunks are blocks of whole samples along the first axis, about :data:`CHUNK_BYTES` each
  (datasets under :data:`MIN_CHUNKED_BYTES` stay contiguous and uncompressed)
  (``rows = max(1, CHUNK_BYTES // bytes_per_sample)``, at most N), so reading a block of samples
  touches few chunks and a chunk never splits a sample;
* compression is lossless (``gzip`` with the byte-shuffle filter by default, or ``lzf``, or ``none``);
  zlib's output depends only on its input and level, so the same array gives the same file bytes
  (and, with ``track_times=False``, the same sha256 in the artifact sidecar);
* ``dtype: float16`` is lossy and applies only to the datasets a writer names as *sample arrays*
  (posterior and prior samples): they are cast on write (round to nearest, relative error
  <= 2^-11 for normal numbers) and the dataset gets the attribute :data:`SOURCE_DTYPE_ATTR` holding
  the dtype it was cast from, so :func:`restore` (used by ``load_h5``) reads them back in that dtype.
  ``float32`` stores every array unchanged.

The choice is the config's top-level ``storage`` section (schema.yaml); its record (:meth:`Storage.record`)
goes into the provenance of every file written with it. Measured sizes and times: docs/storage.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emprior.core.errors import ConfigError

CHUNK_BYTES = 1 << 20
# below this a chunk index costs more than compression saves (docs/storage.md): stay contiguous
MIN_CHUNKED_BYTES = 16 << 10
COMPRESSIONS = ("gzip", "lzf", "none")
DTYPES = ("float32", "float16")
SOURCE_DTYPE_ATTR = "stored_from_dtype"  # on a dataset cast to a lossy storage dtype: the dtype it came from


@dataclass(frozen=True)
class Storage:
    """The ``storage`` config section: codec, gzip level (1-9; ignored by lzf/none) and sample dtype."""

    compression: str = "gzip"
    level: int = 4
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"storage.compression: {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"storage.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 1 <= self.level <= 9:
            raise ConfigError(f"storage.level: {self.level!r} must be an integer from 1 to 9")

    @property
    def lossy(self) -> bool:
        return self.dtype != "float32"

    def record(self) -> dict[str, Any]:
        """What goes into provenance: the settings, and whether sample arrays lost precision."""
        return {**asdict(self), "lossy": self.lossy}


DEFAULT = Storage()


def storage_of(config: dict[str, Any] | None) -> Storage:
    """The :class:`Storage` of a (job) config: its ``storage`` section, defaults for missing keys."""
    section = (config or {}).get("storage") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"storage: expected a mapping, got {section!r}")
    unknown = set(section) - {"compression", "level", "dtype"}
    if unknown:
        raise ConfigError(f"storage.{sorted(unknown)[0]}: unknown key (allowed: compression, level, dtype)")
    return Storage(**section)


def chunk_rows(shape: tuple[int, ...], itemsize: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Samples per chunk: as many whole samples (rows of axis 0) as fit in ``chunk_bytes``, >= 1, <= N."""
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return int(max(1, min(shape[0], chunk_bytes // max(row, 1))))


def stored_array(value: np.ndarray, storage: Storage, sample: bool) -> np.ndarray:
    """The array as it is written: a floating sample array cast to a lossy storage dtype, else unchanged."""
    if sample and storage.lossy and np.issubdtype(value.dtype, np.floating):
        return value.astype(storage.dtype)
    return value


def dataset_kwargs(value: np.ndarray, storage: Storage) -> dict[str, Any]:
    """``h5py.Group.create_dataset`` keywords (besides ``data``) for ``value`` under ``storage``.

    Arrays under :data:`MIN_CHUNKED_BYTES` (scalars, indices of small sets) stay contiguous, as does
    everything with ``none``: the layout of the writer before storage options, byte for byte."""
    kw: dict[str, Any] = {"track_times": False}
    if storage.compression == "none" or value.ndim == 0 or value.nbytes < MIN_CHUNKED_BYTES:
        return kw
    # shuffle groups the bytes of equal significance (sign/exponent bytes of floats repeat a lot)
    kw.update(chunks=(chunk_rows(value.shape, value.dtype.itemsize), *value.shape[1:]), shuffle=True,
              compression=storage.compression)
    if storage.compression == "gzip":
        kw["compression_opts"] = storage.level
    return kw


def restore(value: np.ndarray, attrs: Any) -> np.ndarray:
    """A dataset read back: cast to the dtype it was stored from when it was written lossy."""
    source = attrs.get(SOURCE_DTYPE_ATTR) if attrs is not None else None
    if source is None:
        return value
    if isinstance(source, bytes):
        source = source.decode()
    return value.astype(str(source))
