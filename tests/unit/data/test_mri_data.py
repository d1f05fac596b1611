"""The MRI data: varied Shepp-Logan phantoms (CPU preset) and fastMRI volumes in the official layout,
read from extracted .h5 files and from a tar archive as the official DiEM export reads them."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from emprior.core.errors import DataError
from emprior.data import dataset_shape, load_dataset
from emprior.data.fastmri import load_fastmri
from emprior.data.phantom import load_phantoms


def test_phantoms_are_deterministic_per_seed_and_varied():
    a = load_phantoms(6, size=32, seed=0)
    np.testing.assert_array_equal(a, load_phantoms(6, size=32, seed=0))  # same seed, same bytes
    assert a.shape == (6, 1, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a.max(axis=(1, 2, 3)), 2.0)  # / max, then 4x - 2 (official map)
    np.testing.assert_array_equal(a.min(axis=(1, 2, 3)), -2.0)  # background 0 -> -2
    assert not np.array_equal(a, load_phantoms(6, size=32, seed=1))
    # every phantom differs from every other (random affine maps, intensities and ellipses)
    d = np.abs(a[:, None] - a[None]).mean(axis=(2, 3, 4))
    assert d[~np.eye(6, dtype=bool)].min() > 0.05
    # item i depends on (seed, i) only: held-out phantoms are the items after n
    np.testing.assert_array_equal(load_phantoms(3, size=32, seed=0, offset=3), a[3:])
    x = load_dataset({"name": "phantom", "n": 4, "size": 32, "offset": 2}, seed=0)
    np.testing.assert_array_equal(x, a[2:6])
    assert dataset_shape({"name": "phantom", "n": 4, "size": 32}, seed=0) == (4, 1, 32, 32)


def _volume(rng: np.random.Generator, slices: int, hw: int = 320) -> np.ndarray:
    """Magnitudes ~1e-5 as in the real files, on a dark background (which keeps the .tar.xz fast)."""
    v = np.zeros((slices, hw, hw), np.float32)
    v[:, 140:172, 150:190] = rng.gamma(2.0, 1e-5, (slices, 32, 40))
    return v


def _fastmri_file(target: Path | io.BytesIO, rss: np.ndarray) -> None:
    """A single-coil volume in the fastMRI layout: kspace complex (slices, H, W), reconstruction_esc and
    reconstruction_rss (slices, 320, 320), ismrmrd_header, attributes acquisition / max / norm."""
    n = len(rss)
    with h5py.File(target, "w") as f:
        f.create_dataset("kspace", data=np.zeros((n, 20, 12), np.complex64))
        f.create_dataset("reconstruction_esc", data=(rss * 0.5).astype(np.float32))
        f.create_dataset("reconstruction_rss", data=rss)
        f.create_dataset("ismrmrd_header", data=np.bytes_(b"<ismrmrdHeader></ismrmrdHeader>"))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(rss.max())
        f.attrs["norm"] = float(np.linalg.norm(rss))
        f.attrs["patient_id"] = "0" * 8


def _official(rss: np.ndarray) -> np.ndarray:
    """experiments/fastmri/data.py:28-30 of the official code: [10:41], / max, 4x - 2."""
    s = rss[10:41]
    return (4 * (s / s.max()) - 2)[:, None]


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    a = _volume(rng, 36)   # slices 10..35
    a[2, 5, 5] = 1.0       # the volume's maximum lies outside the kept slices: not used (official)
    b = _volume(rng, 12)   # slices 10..11
    return {"file1000002.h5": a, "file1000001.h5": b}


def test_fastmri_h5_files_as_the_official_export(tmp_path, volumes):
    for name, v in volumes.items():
        _fastmri_file(tmp_path / name, v)
    x = load_fastmri(tmp_path)
    # files by name: b (2 slices) then a (26 slices); 320 x 320, no crop or resize
    assert x.shape == (2 + 26, 1, 320, 320) and x.dtype == np.float32
    np.testing.assert_allclose(x[:2], _official(volumes["file1000001.h5"]), atol=2e-6)
    np.testing.assert_allclose(x[2:], _official(volumes["file1000002.h5"]), atol=2e-6)
    assert x[2:].max() == 2.0  # divided by the maximum of the kept slices, not the attribute 'max'
    cfg = {"name": "fastmri", "root": str(tmp_path), "n": 3}
    np.testing.assert_array_equal(load_dataset(cfg, seed=0), x[:3])
    assert dataset_shape({"name": "fastmri", "root": str(tmp_path)}, seed=0) == (28, 1, 320, 320)
    assert dataset_shape({"name": "fastmri", "root": str(tmp_path / "absent")}, seed=0) == (24853, 1, 320, 320)


def test_fastmri_tar_archive_reads_like_the_extracted_files(tmp_path, volumes):
    folder = tmp_path / "h5"
    folder.mkdir()
    archive = tmp_path / "tar" / "knee_singlecoil_train.tar.xz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as tar:
        for name in ("file1000002.h5", "file1000001.h5"):  # stream order != name order
            _fastmri_file(folder / name, volumes[name])
            tar.add(folder / name, arcname=f"singlecoil_train/{name}")
        info = tarfile.TarInfo("singlecoil_train/README.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    expected = load_fastmri(folder)
    np.testing.assert_array_equal(load_fastmri(archive), expected)          # one archive
    np.testing.assert_array_equal(load_fastmri(archive.parent), expected)   # a folder of archives
    (tmp_path / "bad.tar").write_bytes(b"not a tar archive at all" * 40)
    with pytest.raises(DataError, match=r"bad.tar: unreadable tar archive"):
        load_fastmri(tmp_path / "bad.tar")
