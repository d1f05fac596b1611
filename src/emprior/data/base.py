"""The dataset registry and the config dispatchers :func:`load_dataset` / :func:`prepare_dataset`.

A data set is a :class:`Dataset` subclass registered with its options dataclass, which declares the
config keys it accepts (beside ``name``) and their defaults::

    @dataclass(frozen=True)
    class DigitsOptions:
        n: int | None = option(None, minimum=1, doc="keep the first n items (default: all)")

    @DATASETS.register("digits", DigitsOptions)
    class Digits(Dataset): ...

A field without a default is a required key. A misspelled key is a one-line ConfigError naming the
key and the allowed ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from emprior.core.errors import ConfigError
from emprior.core.registry import Registry

DATASETS: Registry[type[Dataset]] = Registry("dataset", "name")


class Dataset:
    """A registered data set: :meth:`load` returns float32 (N, *event_shape); :meth:`prepare` makes sure
    its files are present before the DAG runs (nothing to do for generated or packaged data)."""

    @classmethod
    def load(cls, opts: Any, seed: int) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def prepare(cls, opts: Any) -> Path | None:
        return None

    @classmethod
    def shape(cls, opts: Any, seed: int) -> tuple[int, ...]:
        """(N, *event_shape) of :meth:`load`'s array; loads it unless a plug-in knows it without reading
        its files (used by the disk plan before any data is present)."""
        return tuple(int(s) for s in cls.load(opts, seed).shape)


def first_n(x: np.ndarray, n: int | None, name: str) -> np.ndarray:
    """The first ``n`` items of a loaded data set (all if None), C-contiguous."""
    if n is not None:
        if n > len(x):
            raise ConfigError(f"dataset.n: {n} requested but dataset '{name}' has only {len(x)} items")
        x = x[:n]
    return np.ascontiguousarray(x)


def square_box(h: int, w: int) -> tuple[int, int, int, int]:
    """Centre crop box (top, left, height, width) of the largest square inside an h x w image
    (shared by the image loaders)."""
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


def dataset_options(cfg: Any) -> tuple[type[Dataset], Any]:
    """(plug-in, options dataclass) of a config's ``dataset`` mapping; one-line ConfigErrors."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError(f"dataset: expected a mapping with a 'name', got {cfg!r}")
    name = cfg["name"]
    entry = DATASETS.entry(name, where="dataset.name")
    fields = dataclasses.fields(entry.options)
    allowed = {f.name for f in fields} | {DATASETS.key}
    missing = [f.name for f in fields if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in cfg]
    # a misspelled key is reported first (by DATASETS.options), as it may be the missing one
    if missing and set(cfg) <= allowed:
        raise ConfigError(f"dataset.{missing[0]}: required for dataset '{name}'")
    return entry.obj, DATASETS.options(name, cfg, where="dataset")


def load_dataset(cfg: dict[str, Any], seed: int) -> np.ndarray:
    """Load the data set described by a config's ``dataset`` mapping, float32 (N, *event_shape).

    Examples: ``{"name": "digits"}``, ``{"name": "manifold", "n": 4096, "dim": 5}``,
    ``{"name": "cifar10", "root": "data/cifar10", "split": "train"}``,
    ``{"name": "ffhq", "root": "data/ffhq", "n": 100, "size": 256}``,
    ``{"name": "fastmri", "root": "data/fastmri", "slices": [10, 41]}``.
    ``n`` keeps the first n items (for ``manifold`` it is the number of points drawn, for ``ffhq``
    the number of images read); ``seed`` only matters for the manifold.
    """
    plugin, opts = dataset_options(cfg)
    n = getattr(opts, "n", None)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ConfigError(f"dataset.n: must be an integer >= 1, got {n!r}")
    return plugin.load(opts, seed)


def dataset_shape(cfg: dict[str, Any], seed: int) -> tuple[int, ...]:
    """(N, *event_shape) of the data set a config's ``dataset`` mapping describes."""
    plugin, opts = dataset_options(cfg)
    return plugin.shape(opts, seed)


def prepare_dataset(cfg: dict[str, Any]) -> Path | None:
    """Make sure a dataset's files are present before the DAG runs (login-node rule).

    Downloads CIFAR-10 if neither the archive nor the extracted folder is in ``root``; checks that
    the FFHQ / fastMRI folders exist (they need a licence: no automatic download). Returns the data
    folder, or ``None`` for data that is generated or ships with a package.
    """
    plugin, opts = dataset_options(cfg)
    return plugin.prepare(opts)
