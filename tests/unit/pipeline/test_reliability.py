"""Reliability: determinism, shard-count independence, resumable training, NaN guards and one-line
errors on bad input. (The SIGKILL harness over a whole Snakemake run is in test_fault_injection.py.)"""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from emprior.core.job import Job
from emprior.pipeline import data as data_rules
from emprior.pipeline import em as em_rules
from emprior.core.artifacts import load_h5, load_torch, save_h5, save_torch, sha256_file
from emprior.diffusion import Schedule
from emprior.core.errors import ArtifactError, NumericalError
from emprior.nets import build_denoiser
from emprior.training.mstep import train_denoiser


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory, ):
    """Tiny digits experiment up to iteration 0 (observations + Gaussian q_0)."""
    from emprior.config.loading import load_config
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    cfg = load_config(repo / "config" / "tiny.yaml")
    d = tmp_path_factory.mktemp("digits")
    data_rules.dataset(Job(cfg, "digits"), str(d / "clean.h5"))
    data_rules.observe(Job(cfg, "digits"), str(d / "clean.h5"), str(d / "observations.h5"))
    em_rules.init_prior(Job(cfg, "digits", "diem_tweedie"), str(d / "observations.h5"), str(d / "iter_000.pt"))
    return cfg, d


def _estep(cfg, d, shards, shard, name):
    c = copy.deepcopy(cfg)
    c["experiments"]["digits"]["estep"]["shards"] = shards
    out = d / name
    em_rules.estep(Job(c, "digits", "diem_tweedie", 1), shard, str(d / "iter_000.pt"), str(d / "observations.h5"),
                   str(out))
    return out


def test_samples_do_not_depend_on_shard_count(digits_setup):
    cfg, d = digits_setup
    one = load_h5(_estep(cfg, d, 1, 0, "one.h5"))[0]
    halves = [load_h5(_estep(cfg, d, 2, j, f"half{j}.h5"))[0] for j in range(2)]
    x2 = np.concatenate([h["x"] for h in halves])
    idx2 = np.concatenate([h["index"] for h in halves])
    np.testing.assert_array_equal(idx2, one["index"])
    assert x2.tobytes() == one["x"].tobytes()


def test_same_config_and_seed_give_bit_identical_files(digits_setup):
    cfg, d = digits_setup
    a = _estep(cfg, d, 2, 1, "again_a.h5")
    b = _estep(cfg, d, 2, 1, "again_b.h5")
    assert sha256_file(a) == sha256_file(b)


def test_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    """Kill training after a checkpoint (simulated by an exception inside the loop), resume from
    <out>.resume.pt, and get the same weights as an uninterrupted run, bit for bit."""
    import emprior.training.mstep as training

    data = torch.randn(256, 5, generator=torch.Generator().manual_seed(0))
    mstep = {"steps": 40, "batch_size": 32, "lr": 1e-3, "lr_final": 1e-5, "scheduler": "linear", "ema_decay": 0.9,
             "clip": 1.0, "checkpoint_every": 10}
    schedule = Schedule(1e-3, 10.0)

    def fresh():
        torch.manual_seed(0)
        return build_denoiser({"net": "mlp", "hidden": [32, 32], "emb_features": 8}, (5,))

    ref = fresh()
    res_ref = train_denoiser(ref, data, schedule, mstep, torch.Generator().manual_seed(1))
    res_ref["ema"].copy_to(ref)

    real_loss, calls = training.dsm_loss, {"n": 0}

    def dying_loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt("SIGKILL stand-in")
        return real_loss(*a, **k)

    resume = tmp_path / "model.pt.resume.pt"
    monkeypatch.setattr(training, "dsm_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_denoiser(fresh(), data, schedule, mstep, torch.Generator().manual_seed(1), resume_path=resume)
    assert resume.exists() and load_torch(resume)["step"] == 20
    monkeypatch.setattr(training, "dsm_loss", real_loss)
    net = fresh()
    res = train_denoiser(net, data, schedule, mstep, torch.Generator().manual_seed(1), resume_path=resume)
    assert res["resumed_from"] == 20
    res["ema"].copy_to(net)
    for (k, a), (_, b) in zip(ref.state_dict().items(), net.state_dict().items()):
        assert torch.equal(a, b), k
    assert res["loss"] == res_ref["loss"]


def test_nan_in_training_names_the_step():
    data = torch.full((64, 5), float("nan"))
    net = build_denoiser({"net": "mlp", "hidden": [8], "emb_features": 4}, (5,))
    with pytest.raises(NumericalError, match=r"non-finite loss at step 0/5"):
        train_denoiser(net, data, Schedule(1e-3, 10.0), {"steps": 5, "batch_size": 8, "lr": 1e-3},
                       torch.Generator().manual_seed(0), context="M-step digits/v iteration 2")


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "emprior", *args], capture_output=True, text=True, timeout=timeout)


def test_nan_in_sampling_fails_naming_iteration_shard_step_and_writes_nothing(digits_setup, tmp_path):
    cfg, d = digits_setup
    ckpt = load_torch(d / "iter_000.pt")
    ckpt["mean"] = torch.full_like(ckpt["mean"], float("nan"))
    bad_model = save_torch(tmp_path / "model.pt", ckpt, provenance={"rule": "init_prior"})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "shard_1.h5"
    res = _cli("estep", "--config", str(tmp_path / "cfg.yaml"), "--experiment", "digits", "--variant",
               "diem_tweedie", "--iteration", "1", "--shard", "1", "--model", str(bad_model), "--observations",
               str(d / "observations.h5"), "--out", str(out))
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: E-step digits/diem_tweedie iteration 1, shard 1, block 1: non-finite values "
                          "in sampling at step"), err
    assert not out.exists() and not list(tmp_path.glob(".shard_1.h5*"))


def test_observation_shape_mismatch_is_one_line(digits_setup, tmp_path):
    cfg, d = digits_setup
    data, attrs = load_h5(d / "observations.h5")
    data["y"] = data["y"][:, :, :, :7]
    bad = save_h5(tmp_path / "observations.h5", data, attrs={k: v for k, v in attrs.items() if k != "provenance"},
                  provenance={"rule": "observe"})
    from emprior.data.observations import load_observations

    with pytest.raises(ArtifactError, match=r"observations.h5: y has shape \(128, 1, 8, 7\) but the operator "
                                            r"expects \(N, 1, 8, 8\)"):
        load_observations(bad)


def test_truncated_model_in_a_rule_is_one_line(digits_setup, tmp_path):
    cfg, d = digits_setup
    model = tmp_path / "iter_000.pt"
    model.write_bytes((d / "iter_000.pt").read_bytes()[:100])
    (tmp_path / "iter_000.pt.prov.json").write_text((d / "iter_000.pt.prov.json").read_text())
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli("estep", "--config", str(tmp_path / "cfg.yaml"), "--experiment", "digits", "--variant",
               "diem_tweedie", "--iteration", "1", "--shard", "0", "--model", str(model), "--observations",
               str(d / "observations.h5"), "--out", str(tmp_path / "s.h5"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"error: {model}: checksum mismatch (file is truncated or was modified"), res.stderr
    assert "init_prior" in res.stderr


def test_missing_dataset_says_how_to_get_it(tmp_path):
    cfg = {"seed": 0, "results": "results", "experiments": {"c": {"dataset": {"name": "cifar10",
                                                                            "root": str(tmp_path / "nope")}}}}
    (tmp_path / "cfg.json").write_text(__import__("json").dumps(cfg))
    res = _cli("dataset", "--config", str(tmp_path / "cfg.json"), "--experiment", "c", "--out",
               str(tmp_path / "clean.h5"))
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "nope" in line and "cifar" in line.lower()
    assert not (tmp_path / "clean.h5").exists()


def test_mstep_leaves_out_posterior_samples_outside_max_abs(digits_setup, tmp_path):
    """mstep.max_abs (official manifold code: |x_i| < 3) drops far-off posterior samples from training,
    keeps them in posterior.h5 and records the count in model.pt; all dropped is a one-line error."""
    cfg, d = digits_setup
    c = copy.deepcopy(cfg)
    c["experiments"]["digits"]["mstep"].update(steps=2, max_abs=3.0)
    x = np.zeros((10, *load_h5(d / "clean.h5")[0]["x"].shape[1:]), np.float32)
    x[[2, 7], 0, 0, 0] = [50.0, -4.0]
    post = tmp_path / "posterior.h5"
    save_h5(post, {"x": x, "index": np.arange(10), "residual_ratio": np.ones(10, np.float32)}, attrs={},
            provenance={"rule": "gather_posterior"})
    em_rules.mstep(Job(c, "digits", "diem_tweedie", 1), str(tmp_path / "model.pt"), posterior=str(post))
    train = load_torch(tmp_path / "model.pt")["train"]
    assert train["dropped"] == 2 and train["n_data"] == 8
    x[:] = 9.0
    save_h5(post, {"x": x, "index": np.arange(10), "residual_ratio": np.ones(10, np.float32)}, attrs={},
            provenance={"rule": "gather_posterior"})
    with pytest.raises(NumericalError, match="every posterior sample lies outside"):
        em_rules.mstep(Job(c, "digits", "diem_tweedie", 1), str(tmp_path / "model2.pt"), posterior=str(post))
