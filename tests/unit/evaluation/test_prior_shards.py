"""Prior samples drawn by shards and gathered (emprior.evaluation.prior_shards, the prior_samples_shard
and gather_prior_samples commands) on q_0 of the tiny digits config."""

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from emprior.core.artifacts import load_h5, save_h5, verify
from emprior.core.errors import ArtifactError
from emprior.core.job import Job
from emprior.evaluation.prior_shards import gather_shards, shard_sizes, shard_stream
from emprior.pipeline import data, em, evaluate

REPO = Path(__file__).resolve().parents[3]


def test_shard_sizes_split_n_contiguously():
    assert shard_sizes(10, 3) == [3, 3, 4] and shard_sizes(7, 7) == [1] * 7 and shard_sizes(64, 1) == [64]
    assert shard_sizes(50000, 10) == [5000] * 10
    for n, s in [(50000, 16), (1001, 10), (65, 2)]:
        sizes = shard_sizes(n, s)
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="shards: must be in 1..4"):
        shard_sizes(4, 5)
    # one shard keeps the stream of the unsharded rule; shards have their own
    assert shard_stream(1, 0) == ("prior_samples",) and shard_stream(2, 1) == ("prior_samples", "shard", 1)


def _fake_shards(tmp_path, sizes, shards=None):
    paths = []
    for j, n in enumerate(sizes):
        p = tmp_path / "prior_samples" / f"shard_{j}.h5"
        save_h5(p, {"x": np.full((n, 2), j, np.float32)}, attrs={"shard": j, "shards": shards or len(sizes),
                                                                    "seed": str(100 + j)})
        paths.append(str(p))
    return paths


def test_gather_is_the_concatenation_and_rejects_bad_shards(tmp_path):
    out = str(tmp_path / "prior_samples.h5")
    paths = _fake_shards(tmp_path, [3, 3, 4])
    x, info, _ = gather_shards(paths, 10, 3, out)
    np.testing.assert_array_equal(x, np.repeat([0, 1, 2], [3, 3, 4]).astype(np.float32)[:, None] * np.ones(2))
    assert [s["n"] for s in info] == [3, 3, 4] and [s["seed"] for s in info] == ["100", "101", "102"]
    assert [s["sha256"] for s in info] == [verify(p)["sha256"] for p in paths]
    with pytest.raises(ArtifactError, match=r"got 2 prior-sample shards, expected 3 \(evaluate.shards\)"):
        gather_shards(paths[:2], 10, 3, out)
    with pytest.raises(ArtifactError, match="not shard 0 of 3"):  # shards out of order
        gather_shards([paths[1], paths[0], paths[2]], 10, 3, out)
    with pytest.raises(ArtifactError, match="4 samples of shape \\[2\\], expected 3"):  # n_samples changed
        gather_shards(paths, 9, 3, out)
    Path(paths[1]).unlink()
    with pytest.raises(ArtifactError, match="shard_1.h5: missing \\(made by rule 'prior_samples_shard'\\)") as e:
        gather_shards(paths, 10, 3, out)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def q0(tmp_path_factory):
    """Tiny digits config (65 prior samples: uneven shards) and its Gaussian q_0 (iter_000/model.pt)."""
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg = {"seed": 0, "results": "results", "torch_threads": 1, "device": "cpu",
           "experiments": {"digits": copy.deepcopy(cfg["experiments"]["digits"])}}
    cfg["experiments"]["digits"]["evaluate"]["n_samples"] = 65
    d = tmp_path_factory.mktemp("q0")
    data.dataset(Job(cfg, "digits"), str(d / "clean.h5"))
    data.observe(Job(cfg, "digits"), str(d / "clean.h5"), str(d / "observations.h5"))
    em.init_prior(Job(cfg, "digits", "diem_tweedie"), str(d / "observations.h5"), str(d / "model.pt"))
    return cfg, d


def _with_shards(cfg, shards):
    cfg = copy.deepcopy(cfg)
    cfg["experiments"]["digits"]["evaluate"]["shards"] = shards
    return cfg


def test_sharded_prior_samples(q0, tmp_path):
    cfg, d = q0
    job = lambda c: Job(c, "digits", "diem_tweedie", 0)  # noqa: E731
    model = str(d / "model.pt")
    evaluate.prior_samples(job(cfg), model, str(tmp_path / "unsharded.h5"))
    x0 = load_h5(tmp_path / "unsharded.h5")[0]["x"]
    assert x0.shape == (65, 1, 8, 8) and x0.dtype == np.float32
    # one shard: the bytes of the unsharded rule's samples
    evaluate.prior_samples_shard(job(_with_shards(cfg, 1)), 0, model, str(tmp_path / "one.h5"))
    assert load_h5(tmp_path / "one.h5")[0]["x"].tobytes() == x0.tobytes()
    # two shards (32 + 33 samples), each its own stream, gathered in shard order
    c2 = _with_shards(cfg, 2)
    paths = [str(tmp_path / "prior_samples" / f"shard_{j}.h5") for j in range(2)]
    for j, p in enumerate(paths):
        evaluate.prior_samples_shard(job(c2), j, model, p)
    parts = [load_h5(p)[0]["x"] for p in paths]
    assert [len(x) for x in parts] == [32, 33] and not np.allclose(parts[0][:32], parts[1][:32])
    evaluate.gather_prior_samples(job(c2), str(tmp_path / "prior_samples.h5"), paths)
    x, attrs = load_h5(tmp_path / "prior_samples.h5")
    assert x["x"].tobytes() == np.concatenate(parts).tobytes()
    assert [s["sha256"] for s in attrs["shards"]] == [verify(p)["sha256"] for p in paths]
    # a shard redone (deleted, rerun) is the same file, byte for byte
    before = verify(paths[1])["sha256"]
    Path(paths[1]).unlink()
    evaluate.prior_samples_shard(job(c2), 1, model, paths[1])
    assert verify(paths[1])["sha256"] == before
