"""The M-step on several processes (``mstep.gpus``: torchrun + DistributedDataParallel), here with gloo on
the CPU: the same trajectory as one process up to float reduction order, a SIGKILLed 2-rank job resumes
to the weights of an uninterrupted one, and without torchrun nothing changes."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from emprior.config.loading import load_config, validate_config
from emprior.core.artifacts import load_torch
from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.pipeline import data as data_rules
from emprior.pipeline import em as em_rules
from emprior.training.mstep import augment

REPO = Path(__file__).resolve().parents[3]
# 2 ranks vs 1 after 8 Adam steps (float32, lr 1e-3): measured max |diff| 2.1e-6 on the tiny digits UNet
# (the network on 16 rows instead of 32 and the gradient all-reduce round differently; Adam scales
# the difference up where a gradient is near zero)
TOL = 1e-5


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Tiny digits experiment up to iteration 1's posterior.h5, and its config as a YAML file."""
    cfg = load_config(REPO / "config" / "tiny.yaml")
    d = tmp_path_factory.mktemp("ddp")
    ex, v = "digits", "diem_tweedie"
    data_rules.dataset(Job(cfg, ex), str(d / "clean.h5"))
    data_rules.observe(Job(cfg, ex), str(d / "clean.h5"), str(d / "observations.h5"))
    em_rules.init_prior(Job(cfg, ex, v), str(d / "observations.h5"), str(d / "iter_000.pt"))
    shards = [str(d / f"shard_{j}.h5") for j in range(2)]
    for j in range(2):
        em_rules.estep(Job(cfg, ex, v, 1), j, str(d / "iter_000.pt"), str(d / "observations.h5"), shards[j])
    em_rules.gather(Job(cfg, ex, v, 1), str(d / "posterior.h5"), shards)
    return cfg, d


def write_config(cfg, path: Path, **mstep) -> Path:
    c = copy.deepcopy(cfg)
    c["experiments"]["digits"]["mstep"].update(mstep)
    c["device"] = "cpu"
    path.write_text(yaml.safe_dump(c))
    return path


def mstep_cmd(config: Path, d: Path, out: Path, nproc: int | None, threads: int | None = None) -> list[str]:
    """``--threads`` is per process: the 2 cores go to one process or are split between torchrun's."""
    threads = threads or 2 // (nproc or 1)
    launcher = ([sys.executable, "-m", "emprior"] if nproc is None else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                 "-m", "emprior"])
    return [*launcher, "mstep", "--config", str(config), "--experiment", "digits", "--variant", "diem_tweedie",
            "--iteration", "1", "--posterior", str(d / "posterior.h5"), "--out", str(out), "--threads", str(threads)]


def run_mstep(config, d, out, nproc=None, threads=None, timeout=300):
    res = subprocess.run(mstep_cmd(config, d, out, nproc, threads), capture_output=True, text=True, timeout=timeout)
    errors = "\n".join(ln for ln in res.stderr.splitlines() if "Error" in ln or "error" in ln)
    assert res.returncode == 0, errors[-3000:]
    return res


def children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def sigkill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once, as SLURM does to a job (torchrun starts each worker in
    a session of its own, so killing torchrun's process group would leave them running)."""
    workers = children(proc.pid)
    for pid in [proc.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
              .split()[0] for pid in workers if Path(f"/proc/{pid}").exists()) and time.monotonic() < deadline:
        time.sleep(0.05)


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_torch(path)
    return {**{f"weights.{k}": v for k, v in ckpt["weights"].items()},
            **{f"raw.{k}": v for k, v in ckpt["raw_weights"].items()}}


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_ranks_follow_the_one_rank_trajectory(digits, tmp_path):
    """The same global batch (32), seed, augmentations (hflip + pad_crop), EMA and clipping: 2 gloo
    ranks of 16 rows each give the 1-process weights after 8 steps up to float reduction order."""
    cfg, d = digits
    config = write_config(cfg, tmp_path / "cfg.yaml", steps=8, augment=["hflip", "pad_crop"])
    run_mstep(config, d, tmp_path / "one.pt")
    res = run_mstep(config, d, tmp_path / "two.pt", nproc=2)
    assert "rank 1 of 2" in res.stderr
    a, b = weights(tmp_path / "one.pt"), weights(tmp_path / "two.pt")
    diff = max_diff(a, b)
    print(f"max |w_1rank - w_2ranks| after 8 steps: {diff:.3g}")
    assert diff < TOL
    la, lb = load_torch(tmp_path / "one.pt")["train"]["loss"], load_torch(tmp_path / "two.pt")["train"]["loss"]
    assert la == pytest.approx(lb, rel=1e-5)
    assert not Path(str(tmp_path / "two.pt") + ".resume.pt").exists()


@pytest.mark.slow
def test_sigkilled_two_rank_job_resumes_to_the_uninterrupted_weights(digits, tmp_path):
    cfg, d = digits
    config = write_config(cfg, tmp_path / "cfg.yaml", steps=200, checkpoint_every=10)
    run_mstep(config, d, tmp_path / "ref.pt", nproc=2)
    out = tmp_path / "model.pt"
    resume = Path(str(out) + ".resume.pt")
    proc = subprocess.Popen(mstep_cmd(config, d, out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert resume.exists(), "no resume state written before the job ended"
    finally:
        sigkill_job(proc)
    assert not out.exists(), "the job finished before it was killed"
    killed_at = load_torch(resume)["step"]
    assert 0 < killed_at < 200
    res = run_mstep(config, d, out, nproc=2)
    assert "resumed from" in res.stderr
    ref, got = load_torch(tmp_path / "ref.pt"), load_torch(out)
    for part in ("weights", "raw_weights"):
        for k, v in ref[part].items():
            assert torch.equal(v, got[part][k]), (part, k)
    assert got["train"]["loss"] == ref["train"]["loss"]
    assert not resume.exists()


@pytest.mark.slow
def test_without_torchrun_the_single_process_path_is_untouched(digits, tmp_path, monkeypatch):
    """No RANK/WORLD_SIZE: no process group, the loss gets the network itself (no DDP wrapper), and
    torchrun with one process (WORLD_SIZE=1) gives the in-process reference bit for bit."""
    import emprior.training.mstep as training

    cfg, d = digits
    # the in-process reference runs with torch loaded unpinned: the torchrun process dispatches natively too
    cfg = {**cfg, "reproducibility": {"cpu_dispatch": "native"}}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    c = copy.deepcopy(cfg)
    c["device"] = "cpu"
    seen = []
    real = training.dsm_loss

    def spy(model, *a, **k):
        seen.append(type(model).__name__)
        return real(model, *a, **k)

    monkeypatch.setattr(training, "dsm_loss", spy)
    em_rules.mstep(Job(c, "digits", "diem_tweedie", 1), str(tmp_path / "ref.pt"), posterior=str(d / "posterior.h5"))
    assert not torch.distributed.is_initialized()
    assert seen and "RowShard" not in seen and "DistributedDataParallel" not in seen, seen
    config = write_config(cfg, tmp_path / "cfg.yaml")
    run_mstep(config, d, tmp_path / "torchrun1.pt", nproc=1, threads=1)  # as in-process (conftest)
    ref, got = load_torch(tmp_path / "ref.pt"), load_torch(tmp_path / "torchrun1.pt")
    for part in ("weights", "raw_weights"):
        for k, v in ref[part].items():
            assert torch.equal(v, got[part][k]), (part, k)
    assert got["train"] == ref["train"]


def test_pad_crop_on_the_device_is_the_slice_crop():
    """The crop by index_select (no device-to-host copy of the offsets) equals slicing at (dx, dy)."""
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for seed in range(5):
        got = augment(x, ["pad_crop"], torch.Generator().manual_seed(seed))
        dx, dy = torch.randint(0, 5, (2,), generator=torch.Generator().manual_seed(seed)).tolist()
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
        assert torch.equal(got, padded[..., dy:dy + 16, dx:dx + 16])


def test_gpus_must_divide_the_batch():
    c = load_config(REPO / "config" / "tiny.yaml")
    c["experiments"]["digits"]["mstep"]["gpus"] = 2
    validate_config(c)
    c["experiments"]["digits"]["mstep"]["gpus"] = 3
    with pytest.raises(ConfigError, match="divisible by gpus"):
        validate_config(c)
