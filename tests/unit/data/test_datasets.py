"""Data loaders on tiny files of the real formats (CIFAR-10 python pickles, FFHQ PNGs, fastMRI h5), and the
dataset registry dispatch."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from emprior.data import load_dataset, prepare_dataset
from emprior.data.cifar10 import CIFAR10_ARCHIVE, CIFAR10_FOLDER, CIFAR10_MD5, load_cifar10
from emprior.data.digits import load_digits
from emprior.data.download import download
from emprior.data.fastmri import load_fastmri
from emprior.data.ffhq import load_ffhq
from emprior.data.manifold import make_manifold
from emprior.core.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Helpers: files in the real formats
# ---------------------------------------------------------------------------------------------


def py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle writes it: byte strings as BINSTRING (which Python 3
    only reads back as bytes with encoding="bytes") and arrays via numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def w(o: object) -> None:
        if isinstance(o, bytes):
            out.extend(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, list):
            out.extend(b"](")
            for e in o:
                w(e)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for e in o:
                w(e)
            out.extend(b"t")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            w((0,))
            w(b"b")
            out.extend(b"tR")  # _reconstruct(ndarray, (0,), 'b')
            out.extend(b"(J\x01\x00\x00\x00")  # state: (1, shape, dtype, is_fortran, raw)
            w(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            w((b"u1", 0, 1))
            out.extend(b"R")
            w((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            w(False)
            w(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")  # BUILD the array
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


def cifar_batch(rng: np.random.Generator, n: int) -> tuple[dict, np.ndarray]:
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"training batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": pixels, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    return batch, pixels


def make_cifar(root: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """root/cifar-10-python.tar.gz holding cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {**{f"data_batch_{i}": 2 + i % 2 for i in range(1, 6)}, "test_batch": 3}
    stage = root / "stage" / CIFAR10_FOLDER
    stage.mkdir(parents=True)
    pixels = {}
    for name, n in sizes.items():
        batch, pixels[name] = cifar_batch(rng, n)
        (stage / name).write_bytes(py2_pickle(batch))
    (stage / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane", b"automobile"]}))
    archive = root / CIFAR10_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(stage, arcname=CIFAR10_FOLDER)
    return archive, pixels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def expected_cifar(pixels: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    v = np.concatenate([pixels[n] for n in names]).astype(np.float64)
    return (4 * v / 255 - 2).reshape(-1, 3, 32, 32)


TRAIN = [f"data_batch_{i}" for i in range(1, 6)]

# ---------------------------------------------------------------------------------------------
# Digits and manifold
# ---------------------------------------------------------------------------------------------


def test_digits_shape_range_and_known_values():
    x = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == -2.0 and x.max() == 2.0
    # First digit, first row in scikit-learn: 0 0 5 13 9 1 0 0 (levels 0..16) -> v / 4 - 2.
    np.testing.assert_array_equal(x[0, 0, 0], [-2, -2, -0.75, 1.25, 0.25, -1.75, -2, -2])


def test_manifold_fixed_by_seed_and_streams_share_the_curve():
    a = make_manifold(2048, 5, seed=3)
    assert a.shape == (2048, 5) and a.dtype == np.float32
    np.testing.assert_array_equal(a, make_manifold(2048, 5, seed=3))
    np.testing.assert_array_equal(a[:100], make_manifold(100, 5, seed=3))  # u drawn first: prefix stable
    # Coordinates are standardised (zero mean, unit std under u ~ U[0, 1)).
    np.testing.assert_allclose(a.mean(0), 0, atol=0.1)
    np.testing.assert_allclose(a.std(0), 1, atol=0.1)
    ref = make_manifold(256, 5, seed=3, stream="reference")
    other = make_manifold(256, 5, seed=4)
    assert not np.allclose(ref, a[:256])

    def nn_dist(q: np.ndarray) -> float:
        return float(np.sqrt(((q[:, None] - a[None]) ** 2).sum(-1)).min(1).mean())

    # Fresh points of the same manifold lie on the curve traced by 2048 points; another seed's do not.
    assert nn_dist(ref) < 0.05 < nn_dist(other)


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------


def test_cifar_from_archive_values_layout_and_order(tmp_path):
    archive, pixels = make_cifar(tmp_path)
    x = load_cifar10(tmp_path, md5=None)
    assert x.dtype == np.float32 and x.shape == (sum(pixels[n].shape[0] for n in TRAIN), 3, 32, 32)
    np.testing.assert_allclose(x, expected_cifar(pixels, TRAIN), atol=1e-6)
    # R, G, B planes of 1024 row-major pixels each: pixel (c=1, h=2, w=5) of image 0 is byte 1024 + 69.
    assert x[0, 1, 2, 5] == pytest.approx(4 * int(pixels["data_batch_1"][0, 1024 + 2 * 32 + 5]) / 255 - 2, abs=1e-6)
    xt = load_cifar10(tmp_path, split="test", md5=md5(archive))
    np.testing.assert_allclose(xt, expected_cifar(pixels, ["test_batch"]), atol=1e-6)


def test_cifar_md5_mismatch_names_file_and_both_digests(tmp_path):
    archive, _ = make_cifar(tmp_path)
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)  # the official md5 cannot match a test archive
    msg = str(e.value)
    assert "\n" not in msg and str(archive) in msg
    assert CIFAR10_MD5 in msg and md5(archive) in msg


def test_cifar_from_extracted_folder_matches_archive(tmp_path):
    archive, pixels = make_cifar(tmp_path)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    archive.unlink()
    x = load_cifar10(tmp_path / "x")
    np.testing.assert_allclose(x, expected_cifar(pixels, TRAIN), atol=1e-6)
    # The batch folder itself is accepted as root too.
    np.testing.assert_array_equal(x, load_cifar10(tmp_path / "x" / CIFAR10_FOLDER))


def test_cifar_missing_says_how_to_obtain(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg


def test_cifar_bad_split():
    with pytest.raises(ValueError, match="'valid'"):
        load_cifar10("x", split="valid")


def _extracted(tmp_path: Path) -> Path:
    archive, _ = make_cifar(tmp_path)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    return tmp_path / "x" / CIFAR10_FOLDER


def test_cifar_corrupt_pickle_names_file(tmp_path):
    folder = _extracted(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3: corrupt CIFAR-10 pickle"):
        load_cifar10(folder)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = _extracted(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2: corrupt CIFAR-10 pickle \(forbidden global posix.getcwd\)"):
        load_cifar10(folder)


def test_cifar_wrong_shape_names_file_and_shape(tmp_path):
    folder = _extracted(tmp_path)
    (folder / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError) as e:
        load_cifar10(folder, split="test")
    assert "test_batch" in str(e.value) and "(2, 100)" in str(e.value)


def test_cifar_truncated_archive_names_file(tmp_path):
    archive, _ = make_cifar(tmp_path)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: corrupt or truncated archive"):
        load_cifar10(tmp_path, md5=None)


# ---------------------------------------------------------------------------------------------
# FFHQ
# ---------------------------------------------------------------------------------------------


def _png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels.astype(np.uint8), mode="RGB").save(path)


def test_ffhq_sorted_first_n_exact_values(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {name: rng.integers(0, 256, (16, 16, 3)) for name in ("00002.png", "00000.png", "00001.png")}
    for name, px in imgs.items():
        _png(tmp_path / name, px)
    x = load_ffhq(tmp_path, n=2, size=16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    for i, name in enumerate(["00000.png", "00001.png"]):
        np.testing.assert_allclose(x[i], imgs[name].transpose(2, 0, 1) * 2 / 255 - 1, atol=1e-6)


def test_ffhq_crop_and_resize(tmp_path):
    # 16 x 24 image: 4 red columns, 16 green, 4 blue; the centre square is all green.
    px = np.zeros((16, 24, 3))
    px[:, :4, 0] = 255
    px[:, 4:20, 1] = 200
    px[:, 20:, 2] = 255
    _png(tmp_path / "a.png", px)
    x = load_ffhq(tmp_path, n=1, size=8)
    assert x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0, 0], -1, atol=1e-6)
    np.testing.assert_allclose(x[0, 1], 200 * 2 / 255 - 1, atol=1e-6)
    np.testing.assert_allclose(x[0, 2], -1, atol=1e-6)


def test_ffhq_errors(tmp_path):
    with pytest.raises(DataError, match="FFHQ not found at .*nowhere"):
        load_ffhq(tmp_path / "nowhere")
    _png(tmp_path / "00000.png", np.zeros((4, 4, 3)))
    with pytest.raises(DataError, match="found 1 PNG images, 100 needed"):
        load_ffhq(tmp_path)
    (tmp_path / "00001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="00001.png: unreadable PNG"):
        load_ffhq(tmp_path, n=2, size=4)


# ---------------------------------------------------------------------------------------------
# fastMRI
# ---------------------------------------------------------------------------------------------


def _mri(path: Path, volume: np.ndarray, key: str = "reconstruction_esc") -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=volume.astype(np.float32))
        f.create_dataset("kspace", data=np.zeros((volume.shape[0], 2, 2), np.complex64))
        f.attrs["acquisition"] = "CORPD_FBK"


def test_fastmri_slices_order_and_minmax(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 1e-5, (50, 32, 32))  # magnitudes ~1e-5 as in the real files
    b = rng.gamma(2.0, 1e-5, (20, 32, 32))
    _mri(tmp_path / "file1000001.h5", a)
    _mri(tmp_path / "file1000000.h5", b)
    x = load_fastmri(tmp_path, size=32, key="reconstruction_esc", normalize="slice")
    assert x.shape == (10 + 31, 1, 32, 32) and x.dtype == np.float32  # b: slices 10..19, a: 10..40
    np.testing.assert_allclose(x.min(axis=(1, 2, 3)), -2, atol=1e-6)
    np.testing.assert_allclose(x.max(axis=(1, 2, 3)), 2, atol=1e-6)
    s = a[10].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(x[10, 0], 4 * (s - s.min()) / (s.max() - s.min()) - 2, atol=1e-5)
    s = b[19].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(x[9, 0], 4 * (s - s.min()) / (s.max() - s.min()) - 2, atol=1e-5)
    # Per-scan normalisation: only the scan's extremes reach -2 and 2.
    xs = load_fastmri(tmp_path, size=32, key="reconstruction_esc", normalize="scan")
    v = b[10:20].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(xs[:10, 0], 4 * (v - v.min()) / (v.max() - v.min()) - 2, atol=1e-5)
    # Resizing keeps the [-2, 2] range exactly.
    xr = load_fastmri(tmp_path, slices=(10, 12), size=16, key="reconstruction_esc", normalize="slice")
    assert xr.shape == (4, 1, 16, 16) and xr.min() == -2 and xr.max() == 2


def test_fastmri_errors(tmp_path):
    with pytest.raises(DataError, match="fastMRI not found at .*https://fastmri.med.nyu.edu"):
        load_fastmri(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no fastMRI"):
        load_fastmri(tmp_path)
    _mri(tmp_path / "a.h5", np.ones((12, 8, 8)), key="reconstruction_esc")
    msg = r"a.h5: no dataset 'reconstruction_rss' \(has \['kspace', 'reconstruction_esc'\]\)"
    with pytest.raises(DataError, match=msg):
        load_fastmri(tmp_path, size=8)
    (tmp_path / "a.h5").unlink()
    _mri(tmp_path / "b.h5", np.ones((12, 64)))
    with pytest.raises(DataError, match=r"b.h5: dataset 'reconstruction_esc' has shape \(12, 64\)"):
        load_fastmri(tmp_path, size=8, key="reconstruction_esc")
    (tmp_path / "b.h5").write_bytes(b"garbage, not HDF5")
    with pytest.raises(DataError, match="b.h5: unreadable HDF5"):
        load_fastmri(tmp_path, size=8)


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------


def test_download_checksums(tmp_path):
    src = tmp_path / "src.bin"
    payload = np.random.default_rng(0).bytes(3 << 20)  # several chunks
    src.write_bytes(payload)
    url = src.as_uri()
    good = hashlib.sha256(payload).hexdigest()
    dest = download(url, tmp_path / "out" / "file.bin", sha256=good, md5=hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload
    mask = os.umask(0)
    os.umask(mask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~mask  # the umask's mode (not mkstemp's 0600)
    # Already present with the right checksum: kept, not fetched again.
    src.unlink()
    assert download(url, dest, sha256=good) == dest

    src.write_bytes(payload)
    bad = "0" * 64
    with pytest.raises(DataError) as e:
        download(url, tmp_path / "bad" / "file.bin", sha256=bad)
    msg = str(e.value)
    assert url in msg and "bad/file.bin" in msg and bad in msg and good in msg and "\n" not in msg
    assert list((tmp_path / "bad").iterdir()) == []  # neither dest nor a temp file is left behind

    with pytest.raises(DataError, match="download of .*missing.bin to .*x.bin failed"):
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


def test_download_replaces_corrupt_existing_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"right")
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"wrong")
    download(src.as_uri(), dest, md5=hashlib.md5(b"right").hexdigest())
    assert dest.read_bytes() == b"right"


# ---------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path):
    x = load_dataset({"name": "digits", "n": 100}, seed=0)
    np.testing.assert_array_equal(x, load_digits()[:100])
    m = load_dataset({"name": "manifold", "n": 64, "dim": 3}, seed=7)
    np.testing.assert_array_equal(m, make_manifold(64, 3, 7))
    folder = _extracted(tmp_path)
    c = load_dataset({"name": "cifar10", "root": str(folder.parent), "split": "test", "n": 2}, seed=0)
    np.testing.assert_array_equal(c, load_cifar10(folder, split="test")[:2])
    _png(tmp_path / "00000.png", np.full((8, 8, 3), 255))
    f = load_dataset({"name": "ffhq", "root": str(tmp_path), "n": 1, "size": 4}, seed=0)
    assert f.shape == (1, 3, 4, 4) and np.all(f == 1)
    _mri(tmp_path / "s.h5", np.random.default_rng(0).random((6, 8, 8)))
    r = load_dataset({"name": "fastmri", "root": str(tmp_path), "slices": [1, 4], "size": 8, "n": 2,
                      "key": "reconstruction_esc"}, seed=0)
    assert r.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("cfg, match", [
    ({"name": "mnist"}, "dataset.name: unknown dataset 'mnist'"),
    ({"name": "digits", "dim": 3}, "dataset.dim: not an option of dataset 'digits' \\(allowed: n\\)"),
    ({"name": "manifold", "n": 10}, "dataset.dim: required"),
    ({"name": "cifar10"}, "dataset.root: required"),
    ({"name": "digits", "n": 5000}, "dataset.n: 5000 requested but dataset 'digits' has only 1797"),
    ({"name": "digits", "n": 0}, "dataset.n: 0 is less than the minimum of 1"),
])
def test_load_dataset_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset(cfg, seed=0)


def test_prepare_dataset(tmp_path):
    assert prepare_dataset({"name": "digits"}) is None
    folder = _extracted(tmp_path)
    assert prepare_dataset({"name": "cifar10", "root": str(folder.parent)}) == folder.parent
    with pytest.raises(DataError, match="FFHQ not found"):
        prepare_dataset({"name": "ffhq", "root": str(tmp_path / "ffhq")})
    with pytest.raises(DataError, match="fastMRI not found"):
        prepare_dataset({"name": "fastmri", "root": str(tmp_path / "mri")})
