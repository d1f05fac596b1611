"""``digits``: scikit-learn's 1797 8x8 digits (ships with the package), float32 (1797, 1, 8, 8) in [-2, 2]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emprior.core.registry import option
from emprior.data.base import DATASETS, Dataset, first_n

N_DIGITS = 1797  # images in scikit-learn's digits


@dataclass(frozen=True)
class DigitsOptions:
    n: int | None = option(None, minimum=1, doc="keep the first n items (default: all)")


def load_digits() -> np.ndarray:
    """scikit-learn's 1797 8x8 digits (integers 0..16) as float32 (1797, 1, 8, 8) in [-2, 2].

    x = 4 v / 16 - 2, the same [-2, 2] convention as the official DiEM image experiments.
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # lazy: scikit-learn takes ~1 s to import

    images = _sk_load_digits().images  # (1797, 8, 8), float64 in [0, 16]
    return (images[:, None] / 4.0 - 2.0).astype(np.float32)


@DATASETS.register("digits", DigitsOptions)
class Digits(Dataset):
    """scikit-learn 8x8 digits in [-2, 2] (CPU stand-in for CIFAR-10)."""

    @classmethod
    def load(cls, opts: DigitsOptions, seed: int) -> np.ndarray:
        return first_n(load_digits(), opts.n, "digits")

    @classmethod
    def shape(cls, opts: DigitsOptions, seed: int) -> tuple[int, ...]:
        return (min(N_DIGITS, opts.n or N_DIGITS), 1, 8, 8)
