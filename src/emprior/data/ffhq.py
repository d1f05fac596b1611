"""``ffhq``: a folder of FFHQ PNGs (Table 4), float32 (n, 3, size, size) in [-1, 1] (the DPS model range).

FFHQ requires accepting a licence, so it is never downloaded: the loader says where to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emprior.core.errors import DataError
from emprior.core.registry import option
from emprior.data.base import DATASETS, Dataset, square_box

FFHQ_HELP = ("download the FFHQ images (https://github.com/NVlabs/ffhq-dataset; the DPS/MMPS benchmarks use "
             "the first 100 images at 256x256, 00000.png ...) into that folder")


@dataclass(frozen=True)
class FFHQOptions:
    root: str = option(doc="folder of PNG images (sub-folders included)")
    n: int = option(100, minimum=1, doc="number of images read (sorted by relative path)")
    size: int = option(256, minimum=1, doc="side of the square images after resizing")


def load_ffhq(folder: str | Path, n: int = FFHQOptions.n, size: int = FFHQOptions.size) -> np.ndarray:
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
                top, left, h, w = square_box(img.height, img.width)
                img = img.crop((left, top, left + w, top + h))
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BICUBIC)
                pixels = np.asarray(img, dtype=np.float32)  # (size, size, 3) in [0, 255]
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable PNG ({str(exc).splitlines()[0]})") from None
        out[i] = pixels.transpose(2, 0, 1) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return out


@DATASETS.register("ffhq", FFHQOptions)
class FFHQ(Dataset):
    """Folder of FFHQ PNGs in [-1, 1] (pre-downloaded: licence)."""

    @classmethod
    def load(cls, opts: FFHQOptions, seed: int) -> np.ndarray:
        # n: null reads the default number of images, as before the registry
        n = FFHQOptions.n if opts.n is None else int(opts.n)
        return load_ffhq(opts.root, n=n, size=int(opts.size))

    @classmethod
    def shape(cls, opts: FFHQOptions, seed: int) -> tuple[int, ...]:
        return (FFHQOptions.n if opts.n is None else int(opts.n), 3, int(opts.size), int(opts.size))

    @classmethod
    def prepare(cls, opts: FFHQOptions) -> Path:
        """Check that the folder holds PNGs (no automatic download)."""
        root = Path(opts.root)
        if not root.is_dir() or not any(root.rglob("*.png")):
            raise DataError(f"FFHQ not found at {root}: {FFHQ_HELP}")
        return root
