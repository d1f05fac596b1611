"""HDF5 storage of sample arrays: chunked, lossless by default, deterministic bytes, float16 opt-in."""

import json

import h5py
import numpy as np
import pytest
import torch

from emprior.config.loading import job_config, validate_config
from emprior.core.artifacts import load_h5, save_h5, sidecar, verify
from emprior.core.errors import ArtifactError, ConfigError
from emprior.core.storage import CHUNK_BYTES, MIN_CHUNKED_BYTES, SOURCE_DTYPE_ATTR, Storage, chunk_rows, storage_of

CIFAR = (300, 3, 32, 32)


def _samples(shape=CIFAR, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2


def _write(path, x, storage=None):
    return save_h5(path, {"x": x, "index": np.arange(len(x)), "residual_ratio": np.ones(len(x), np.float32)},
                   attrs={"iteration": 1}, provenance={"rule": "gather_posterior"}, storage=storage, samples=("x",))


def test_chunk_rows_closed_form():
    assert chunk_rows((50000, 3, 32, 32), 4) == CHUNK_BYTES // (3 * 32 * 32 * 4) == 85
    assert chunk_rows((1797, 1, 8, 8), 4) == 1797            # all of digits fits in one 1 MiB chunk
    assert chunk_rows((3, 1 << 19), 4) == 1                  # a 2 MiB sample: one sample per chunk
    assert chunk_rows((50000,), 8) == 50000


def test_default_is_lossless_chunked_gzip(tmp_path):
    x = _samples()
    path = _write(tmp_path / "posterior.h5", x)
    data, attrs = load_h5(path)
    assert data["x"].dtype == np.float32 and torch.equal(torch.from_numpy(data["x"]), x)
    assert np.array_equal(data["index"], np.arange(len(x))) and attrs["iteration"] == 1
    with h5py.File(path) as f:
        d = f["x"]
        assert (d.compression, d.compression_opts, d.shuffle, d.chunks) == ("gzip", 4, True, (85, 3, 32, 32))
        assert SOURCE_DTYPE_ATTR not in d.attrs
        assert f["residual_ratio"].chunks is None and f["residual_ratio"].nbytes < MIN_CHUNKED_BYTES
        assert h5py.h5o.get_info(d.id).ctime == 0  # no creation time in the file: equal inputs, equal bytes
        assert json.loads(f.attrs["provenance"])["storage"] == {"compression": "gzip", "level": 4,
                                                                "dtype": "float32", "lossy": False, "samples": ["x"]}
    # random float32 mantissas compress little, but the file must not grow beyond the raw bytes
    assert path.stat().st_size < x.numel() * 4


def test_same_input_same_file_bytes(tmp_path):
    a = _write(tmp_path / "a.h5", _samples())
    b = _write(tmp_path / "b.h5", _samples())
    assert a.read_bytes() == b.read_bytes()
    assert verify(a)["sha256"] == verify(b)["sha256"]


def test_codecs_lossless_and_none_is_todays_layout(tmp_path):
    x = _samples((64, 3, 8, 8)).numpy()
    for codec in ("lzf", "none"):
        path = save_h5(tmp_path / f"{codec}.h5", {"x": x}, storage=Storage(codec), samples=("x",))
        assert np.array_equal(load_h5(path)[0]["x"], x)
    with h5py.File(tmp_path / "lzf.h5") as f:
        assert f["x"].compression == "lzf" and f["x"].chunks == (64, 3, 8, 8)
    # compression none: the contiguous dataset the writer made before storage options existed
    with h5py.File(tmp_path / "plain.h5", "w", track_order=True) as f:
        f.create_dataset("x", data=x)
    assert (tmp_path / "none.h5").read_bytes() == (tmp_path / "plain.h5").read_bytes()


def test_float16_is_opt_in_marked_and_within_rounding(tmp_path):
    x = _samples()
    path = _write(tmp_path / "posterior.h5", x, Storage(dtype="float16"))
    with h5py.File(path) as f:
        assert f["x"].dtype == np.float16 and f["x"].attrs[SOURCE_DTYPE_ATTR] == "float32"
        assert f["residual_ratio"].dtype == np.float32 and f["index"].dtype == np.int64  # not sample arrays
    record = json.loads(sidecar(path).read_text())["provenance"]["storage"]
    assert record["dtype"] == "float16" and record["lossy"] is True and record["samples"] == ["x"]
    back = torch.from_numpy(load_h5(path)[0]["x"])
    assert back.dtype == torch.float32
    err = (back - x).abs()
    # round to nearest: relative error <= 2^-11 for normal float16, absolute <= 2^-25 below 2^-14
    assert bool((err <= torch.maximum(x.abs() * 2.0**-11, torch.tensor(2.0**-25))).all())
    assert float(err.max()) > 0  # it did lose precision: the bound is not vacuous
    # float16 files are about half the float32 ones
    ref = _write(tmp_path / "f32.h5", x)
    assert path.stat().st_size < 0.6 * ref.stat().st_size


def test_observations_round_trip_exactly(tmp_path):
    from emprior.data.observations import corrupt, load_observations, save_observations

    x = _samples((100, 1, 8, 8)).numpy()
    obs = corrupt(x, {"operator": "pixel_mask", "options": {"deleted": 0.75}, "noise_std": 1e-3}, 0, "digits")
    save_observations(tmp_path / "observations.h5", obs, {"rule": "observe"}, Storage(dtype="float16"))
    back = load_observations(tmp_path / "observations.h5")
    assert back.y.dtype == torch.float32 and torch.equal(back.y, obs.y)  # never lossy, whatever the dtype
    assert torch.equal(back.op.A(torch.from_numpy(x)), obs.op.A(torch.from_numpy(x)))
    with h5py.File(tmp_path / "observations.h5") as f:
        assert f["y"].compression == "gzip" and f["y"].dtype == np.float32
        assert f["index"].chunks is None and f["index"].compression is None  # 800 bytes: contiguous


def test_corrupt_compressed_file_fails_its_checksum(tmp_path):
    path = _write(tmp_path / "posterior.h5", _samples((200, 3, 8, 8)))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_h5(path)


def test_storage_config_is_validated_and_carried(repo):
    from emprior.config.loading import load_config

    cfg = load_config(repo / "config" / "tiny.yaml")
    assert "storage" not in job_config(cfg, "digits", "diem_tweedie")  # default configs: job configs unchanged
    cfg["storage"] = {"compression": "lzf", "dtype": "float16"}
    validate_config(cfg)
    assert job_config(cfg, "digits", "diem_tweedie")["storage"] == cfg["storage"]
    assert storage_of(job_config(cfg, "digits")) == Storage("lzf", 4, "float16")
    for bad, field in (({"dtype": "float64"}, "storage.dtype"), ({"level": 0}, "storage.level"),
                       ({"codec": "gzip"}, "codec")):
        with pytest.raises(ConfigError, match=field):
            validate_config({**cfg, "storage": bad})
        with pytest.raises(ConfigError, match=field):
            storage_of({"storage": bad})


def test_float16_shards_gather_to_the_same_float16_values(tmp_path):
    from emprior.core.job import Job
    from emprior.pipeline.em import gather

    cfg = {"seed": 0, "results": str(tmp_path), "storage": {"dtype": "float16"}}
    x = _samples((16, 3, 8, 8))
    shards = []
    for j, rows in enumerate([np.arange(8, 16), np.arange(8)]):
        path = tmp_path / f"shard_{j}.h5"
        save_h5(path, {"x": x[rows], "index": rows, "residual_ratio": np.ones(8, np.float32)},
                attrs={"blocks": [j], "block_seeds": [str(j)], "solver": {}}, provenance={"rule": "estep_shard"},
                storage=storage_of(cfg), samples=("x",))
        shards.append(str(path))
    gather(Job(cfg, "e", "v", 1), str(tmp_path / "posterior.h5"), shards)
    with h5py.File(tmp_path / "posterior.h5") as f:
        on_disk = f["x"][()]
    assert on_disk.dtype == np.float16 and np.array_equal(on_disk, x.numpy().astype(np.float16))  # no double rounding
    assert json.loads(sidecar(tmp_path / "posterior.h5").read_text())["provenance"]["storage"]["dtype"] == "float16"
