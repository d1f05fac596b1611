"""SIGTERM before a cluster time limit (slurm/config.yaml: --signal=TERM@300): the M-step saves its
resume state at once and the E-step keeps its finished blocks, both exit with status 143, and the
rerun ends with exactly what an uninterrupted run gives. Without a signal nothing changes."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emprior.core.artifacts import load_h5, load_torch, save_h5
from emprior.core.job import Job
from emprior.core.preempt import EXIT_PREEMPTED
from emprior.diffusion import Schedule
from emprior.methods.estep import block_path, run_estep, shard_blocks
from emprior.nets import build_denoiser
from emprior.pipeline import data as data_rules
from emprior.pipeline import em as em_rules
from emprior.training.mstep import train_denoiser

REPO = Path(__file__).resolve().parents[3]

# Runs the CLI in a subprocess; EMPRIOR_TEST_SLOW (seconds) slows every E-step block / training step
# down (a sleep, numerics untouched), so that a SIGTERM sent from outside lands mid-way.
WRAPPER = """
import os, sys, time
slow = float(os.environ.get("EMPRIOR_TEST_SLOW", "0"))
if slow:
    import emprior.methods.estep as e, emprior.training.mstep as m
    sample_block, dsm_loss = e._sample_block, m.dsm_loss
    e._sample_block = lambda *a, **k: (time.sleep(slow), sample_block(*a, **k))[1]
    m.dsm_loss = lambda *a, **k: (time.sleep(slow), dsm_loss(*a, **k))[1]
from emprior.pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny digits up to q_0, a config with 16 E-step blocks in one shard and a 120-step M-step, and
    a posterior.h5 for the M-step."""
    from emprior.config.loading import load_config

    cfg = load_config(REPO / "config" / "tiny.yaml")
    exp = cfg["experiments"]["digits"]
    exp["estep"].update(block_size=8, shards=1)
    exp["mstep"].update(steps=120, checkpoint_every=20)
    d = tmp_path_factory.mktemp("preempt")
    data_rules.dataset(Job(cfg, "digits"), str(d / "clean.h5"))
    data_rules.observe(Job(cfg, "digits"), str(d / "clean.h5"), str(d / "observations.h5"))
    em_rules.init_prior(Job(cfg, "digits", "diem_tweedie"), str(d / "observations.h5"), str(d / "iter_000.pt"))
    x = torch.randn((64, *load_h5(d / "clean.h5")[0]["x"].shape[1:]), generator=torch.Generator().manual_seed(3))
    save_h5(d / "posterior.h5", {"x": x, "index": np.arange(64), "residual_ratio": np.ones(64, np.float32)},
            attrs={}, provenance={"rule": "gather_posterior"})
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return cfg, d


def _command(d: Path, rule: str, out: Path) -> list[str]:
    ids = ["--config", str(d / "cfg.yaml"), "--experiment", "digits", "--variant", "diem_tweedie", "--iteration", "1"]
    if rule == "estep":
        args = ["--shard", "0", "--model", str(d / "iter_000.pt"), "--observations", str(d / "observations.h5")]
    else:
        args = ["--posterior", str(d / "posterior.h5")]
    return [sys.executable, "-c", WRAPPER, rule, *ids, *args, "--out", str(out)]


def _run(cmd, slow=0.0, timeout=120):
    env = {**os.environ, "EMPRIOR_TEST_SLOW": str(slow)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _sigterm_when(cmd, ready, slow, timeout=120):
    """Start ``cmd``, send it SIGTERM as soon as ``ready()`` holds; (return code, stderr)."""
    env = {**os.environ, "EMPRIOR_TEST_SLOW": str(slow)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"finished before the signal: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "timed out waiting for the first saved state"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.mark.slow  # three CLI runs (~15-40 s on a loaded machine)
def test_sigterm_in_mstep_saves_resume_state_and_rerun_gives_identical_weights(setup, tmp_path):
    cfg, d = setup
    ref = tmp_path / "ref" / "model.pt"
    res = _run(_command(d, "mstep", ref))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "model.pt"
    resume = Path(str(out) + ".resume.pt")
    first = Path(str(resume) + ".prov.json")  # sidecar written last: the first periodic state is complete
    rc, err = _sigterm_when(_command(d, "mstep", out), first.exists, slow=0.02)
    assert rc == EXIT_PREEMPTED, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("preempted: M-step") and "SIGTERM, stopped after step" in line, line
    stopped = int(line.split("stopped after step ")[1].split("/")[0])
    assert 20 <= stopped < 120
    assert load_torch(resume)["step"] == stopped and not out.exists()
    res = _run(_command(d, "mstep", out))
    assert res.returncode == 0, res.stderr
    assert f"resumed from {resume} at step {stopped}/120" in res.stderr
    assert not resume.exists()
    a, b = load_torch(ref), load_torch(out)
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["train"]["loss"] == b["train"]["loss"]


@pytest.mark.slow  # three CLI runs
def test_sigterm_in_estep_keeps_finished_blocks_and_rerun_gives_identical_shard(setup, tmp_path):
    cfg, d = setup
    ref = tmp_path / "ref" / "shard_0.h5"
    res = _run(_command(d, "estep", ref))
    assert res.returncode == 0, res.stderr
    assert not Path(str(ref) + ".blocks").exists()  # removed once the shard is written
    out = tmp_path / "shard_0.h5"
    partial = Path(str(out) + ".blocks")
    first = Path(str(block_path(partial, 0)) + ".prov.json")  # sidecar written last: block 0 is done
    rc, err = _sigterm_when(_command(d, "estep", out), first.exists, slow=0.3)
    assert rc == EXIT_PREEMPTED, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("preempted: E-step digits/diem_tweedie iteration 1, shard 0: SIGTERM, stopped after "
                           "block"), line
    saved = sorted(p.name for p in partial.glob("block_*.h5"))
    assert 1 <= len(saved) < 16 and saved == [f"block_{b:05d}.h5" for b in range(len(saved))]
    assert not out.exists()
    mtimes = {p: p.stat().st_mtime_ns for p in partial.glob("block_*.h5")}
    res = _run(_command(d, "estep", out))
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("reused from") == len(saved)  # finished blocks are not redone
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.exists()) and not partial.exists()
    (a, attrs_a), (b, attrs_b) = load_h5(ref), load_h5(out)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    assert {k: v for k, v in attrs_a.items() if k != "provenance"} == \
        {k: v for k, v in attrs_b.items() if k != "provenance"}


def test_blocks_from_another_model_or_seed_are_recomputed(setup, tmp_path):
    cfg, d = setup
    job = Job(copy.deepcopy(cfg), "digits", "diem_tweedie", 1)
    ref = tmp_path / "ref.h5"
    em_rules.estep(job, 0, str(d / "iter_000.pt"), str(d / "observations.h5"), str(ref))
    out = tmp_path / "shard_0.h5"
    partial = Path(str(out) + ".blocks")
    junk = {"x": np.full((8, 1, 8, 8), 7.0, np.float32), "residual_ratio": np.zeros(8, np.float32)}
    good_key = {"model_sha256": "0" * 64, "observations_sha256": "", "config_sha256": ""}
    save_h5(block_path(partial, 0), junk, attrs={"seed": str(job.derive_seed("estep", 0)), "solver": {}, **good_key})
    save_h5(block_path(partial, 1), junk, attrs={"seed": "123", "solver": {}, **good_key})
    block_path(partial, 2).write_bytes(b"truncated")  # no sidecar: unusable
    em_rules.estep(job, 0, str(d / "iter_000.pt"), str(d / "observations.h5"), str(out))
    a, b = load_h5(ref)[0], load_h5(out)[0]
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_without_a_signal_nothing_changes(setup, tmp_path):
    """The guards (handler installed, flag read per step / block, block files) leave results as the
    plain code paths give them: E-step samples equal run_estep without partial results, M-step weights
    equal train_denoiser without a resume file (no handler)."""
    cfg, d = setup
    from emprior.data.observations import load_observations
    from emprior.priors.checkpoint import load_prior

    job = Job(copy.deepcopy(cfg), "digits", "diem_tweedie", 1)
    out = tmp_path / "shard_0.h5"
    em_rules.estep(job, 0, str(d / "iter_000.pt"), str(d / "observations.h5"), str(out))
    obs = load_observations(d / "observations.h5")
    blocks = shard_blocks(len(obs), 8, 1, 0)
    plain = run_estep(load_prior(d / "iter_000.pt"), em_rules.method_of(job), obs, job, blocks)
    data, attrs = load_h5(out)
    assert data["x"].tobytes() == plain["x"].numpy().tobytes()
    assert data["residual_ratio"].tobytes() == plain["residual_ratio"].numpy().tobytes()
    assert attrs["solver"] == plain["solver"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored

    x = torch.randn(128, 5, generator=torch.Generator().manual_seed(0))
    mstep = {"steps": 30, "batch_size": 16, "lr": 1e-3, "ema_decay": 0.9, "clip": 1.0, "checkpoint_every": 10}
    nets = []
    for resume in (None, tmp_path / "m.pt.resume.pt"):
        torch.manual_seed(0)
        net = build_denoiser({"net": "mlp", "hidden": [16], "emb_features": 4}, (5,))
        r = train_denoiser(net, x, Schedule(1e-3, 10.0), mstep, torch.Generator().manual_seed(1), resume_path=resume)
        nets.append((net, r["loss"]))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert nets[0][1] == nets[1][1]
    for (k, a), (_, b) in zip(nets[0][0].state_dict().items(), nets[1][0].state_dict().items()):
        assert torch.equal(a, b), k
