"""Size and write/read time of HDF5 sample arrays under each storage setting (docs/storage.md).

    python benchmarks/storage_codecs.py [--cifar-n 10000] [--repeats 3]

Arrays: digits-size (1797 x 1 x 8 x 8, the real scikit-learn digits) and CIFAR-size (n x 3 x 32 x 32,
synthetic: 8-bit quantised smooth noise in [-2, 2], as CIFAR-10 is 8-bit), each as three kinds of
content: ``clean`` (quantised data, clean.h5), ``samples`` (clean + 0.05 N(0, 1): full float32
mantissas, like posterior and prior samples) and ``observed`` (pixel mask, 75 % deleted, zeros there,
+ 1e-3 noise: observations.h5's y). Every file is written through emprior.core.storage's layout (the
codec under test) to a temporary folder; times are the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from emprior.core.storage import Storage, dataset_kwargs, stored_array

SETTINGS = {  # compression none writes what "contiguous (before)" writes, byte for byte (tests/unit/core)
    "contiguous (before)": None,
    "gzip 1 + shuffle": Storage("gzip", 1),
    "gzip 4 + shuffle": Storage("gzip", 4),
    "gzip 6 + shuffle": Storage("gzip", 6),
    "gzip 9 + shuffle": Storage("gzip", 9),  # skipped above --slow-max-mb (9 s for 6 MB of observations)
    "lzf + shuffle": Storage("lzf"),
    "float16, gzip 4 + shuffle": Storage("gzip", 4, "float16"),
}


def contents(n_cifar: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    digits = (load_digits().images[:, None] / 4.0 - 2.0).astype(np.float32)
    # smooth noise: a 4x4 grid of Gaussians upsampled to 32x32, quantised to 256 levels in [-2, 2]
    coarse = rng.standard_normal((n_cifar, 3, 4, 4)).astype(np.float32)
    smooth = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3) + 0.3 * rng.standard_normal(
        (n_cifar, 3, 32, 32), dtype=np.float32)
    cifar = (np.round(np.clip((smooth + 3) / 6, 0, 1) * 255) / 255 * 4 - 2).astype(np.float32)
    out = {}
    for name, clean in (("digits", digits), ("cifar", cifar)):
        out[f"{name} clean"] = clean
        out[f"{name} samples"] = (clean + 0.05 * rng.standard_normal(clean.shape, dtype=np.float32)).astype(np.float32)
        keep = rng.random(clean.shape, dtype=np.float32) >= 0.75
        out[f"{name} observed"] = (keep * (clean + 1e-3 * rng.standard_normal(clean.shape, dtype=np.float32))
                                   ).astype(np.float32)
    return out


def write(path: Path, x: np.ndarray, storage: Storage | None) -> None:
    with h5py.File(path, "w", track_order=True) as f:
        if storage is None:
            f.create_dataset("x", data=x)
        else:
            data = stored_array(x, storage, sample=True)
            f.create_dataset("x", data=data, **dataset_kwargs(data, storage))


def read(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["x"][()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar-n", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-max-mb", type=float, default=10.0, help="run gzip 9 only on arrays up to this size")
    ap.add_argument("--out", default=str(Path(__file__).with_name("storage_codecs.json")))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, x in contents(args.cifar_n).items():
            for label, storage in SETTINGS.items():
                if storage is not None and storage.level == 9 and x.nbytes > args.slow_max_mb * 1e6:
                    continue
                path = Path(tmp) / "x.h5"
                tw, tr = [], []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    write(path, x, storage)
                    tw.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    back = read(path)
                    tr.append(time.perf_counter() - t)
                size = path.stat().st_size
                exact = bool(np.array_equal(back.astype(np.float32), x))
                row = {"array": kind, "shape": list(x.shape), "setting": label, "raw_mb": x.nbytes / 1e6,
                       "file_mb": size / 1e6, "ratio": size / x.nbytes, "write_s": statistics.median(tw),
                       "read_s": statistics.median(tr), "lossless": exact}
                rows.append(row)
                print(f"{kind:17s} {label:26s} {row['file_mb']:9.3f} MB  ratio {row['ratio']:.3f}  "
                      f"write {row['write_s']:.3f} s  read {row['read_s']:.3f} s  lossless {exact}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
