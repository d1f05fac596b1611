"""Artifacts and sidecars (issue 26, issue 23's full disk): modes follow the umask, the pair appears
together or not at all, every sidecar records the job's command line and config, `rerun` reproduces a
model.pt byte for byte, and a full disk is one line with exit status 1 and nothing partial."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emprior.core import artifacts
from emprior.core.artifacts import load_json, save_h5, save_json, save_torch, sidecar, verify
from emprior.core.errors import ArtifactError, DiskFullError
from emprior.pipeline.cli import main
from emprior.pipeline.rerun import rerun


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_artifacts_and_sidecars_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        files = [save_h5(tmp_path / "a.h5", {"x": np.arange(3.0)}, provenance={"rule": "t"}),
                 save_json(tmp_path / "m.json", {"a": 1}), save_torch(tmp_path / "m.pt", {"w": np.arange(2)})]
    finally:
        os.umask(old)
    for f in files:
        assert f.stat().st_mode & 0o777 == mode, f
        assert sidecar(f).stat().st_mode & 0o777 == mode, sidecar(f)


def test_a_failed_sidecar_write_leaves_the_old_pair(tmp_path, monkeypatch):
    path = save_json(tmp_path / "metrics.json", {"v": 1})
    before = (path.read_bytes(), sidecar(path).read_bytes())

    def broken(*_a, **_k):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(artifacts, "_sidecar_text", broken)
    with pytest.raises(OSError):
        save_json(path, {"v": 2})
    assert (path.read_bytes(), sidecar(path).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "metrics.json.prov.json"]


def test_a_kill_between_the_renames_leaves_no_artifact(tmp_path, monkeypatch):
    """The sidecar is renamed first: an interruption before the artifact's rename leaves a missing output
    (Snakemake reruns the job), never an artifact without its checksum."""
    path = save_json(tmp_path / "metrics.json", {"v": 1})
    real = os.replace

    def replace(src, dst):
        if Path(dst) == path:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_json(path, {"v": 2})
    monkeypatch.setattr(artifacts.os, "replace", real)
    assert not path.exists() and json.loads(sidecar(path).read_text())["size"] > 0
    with pytest.raises(ArtifactError, match="missing"):
        load_json(path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_disk_full_names_file_bytes_needed_and_free(tmp_path, monkeypatch):
    """A quota (EDQUOT) hit by the write: one DiskFullError line; the temporaries are removed."""
    real = Path.write_bytes

    def full(self, data):
        real(self, data[:10])
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError) as info:
        save_h5(tmp_path / "p.h5", {"x": np.zeros(1000)})
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "p.h5") in msg and "EDQUOT" in msg
    needed = int(msg.split("it needs ")[1].split(" bytes")[0])
    assert needed > 8000  # 1000 float64 + the HDF5 header
    assert int(msg.split(", ")[-1].split(" bytes are free")[0]) == artifacts.free_bytes(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_sidecar_records_the_command_and_rerun_reproduces_model_pt(tiny_digits, tmp_path, monkeypatch):
    cfg = tiny_digits(tmp_path, {"diem_tweedie": {"method": "diem"}})
    # this process loaded torch unpinned: the rerun's new process must dispatch as natively as it did
    cfg["reproducibility"] = {"cpu_dispatch": "native"}
    job_cfg = tmp_path / "job.json"
    job_cfg.write_text(json.dumps(cfg))
    args = ["init-prior", "--config", "job.json", "--experiment", "digits", "--variant", "diem_tweedie",
            "--observations", "observations.h5", "--out", "out/model.pt"]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0  # in this process (torch is loaded already); the rerun is a new process
    job = verify(tmp_path / "out" / "model.pt")["job"]
    assert job["args"] == args and job["config_file"] == "job.json" and job["cwd"] == str(tmp_path)
    assert job["argv"] == sys.orig_argv
    monkeypatch.chdir(tmp_path.parent)
    assert rerun(tmp_path / "out" / "model.pt") == (f"identical: {tmp_path / 'out' / 'model.pt'}", 0)
    # where bytes differ, the arrays are named (here compared in-process: no third torch start)
    import torch

    from emprior.pipeline.rerun import differences

    ckpt = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    name, value = next((k, v) for k, v in ckpt.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    ckpt[name] = value + 0.5
    torch.save(ckpt, tmp_path / "changed.pt")
    assert differences(tmp_path / "out" / "model.pt", tmp_path / "changed.pt") == [
        f"{name} (max abs difference 0.5)"]


def test_hdf5_and_torch_on_a_full_filesystem(tiny_digits, tmp_path, capsys):
    """The real thing: a tmpfs of 64 kB (root only; elsewhere the EDQUOT test above stands in)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        import torch

        with pytest.raises(DiskFullError, match=r"big.h5: no space left on device \(errno ENOSPC\)"):
            save_h5(mnt / "big.h5", {"x": np.random.default_rng(0).random(20000)})
        with pytest.raises(DiskFullError, match=r"big.pt: no space left on device .* it needs 8\d{4} bytes, "
                                                r"65536 bytes are free"):
            save_torch(mnt / "big.pt", {"x": torch.rand(20000)})
        assert list(mnt.iterdir()) == []
        # a job run by the CLI: one line, exit status 1, nothing at the destination
        cfg = tiny_digits(tmp_path, {"diem_tweedie": {"method": "diem"}})
        (tmp_path / "job.json").write_text(json.dumps(cfg))
        (mnt / "filler").write_bytes(b"0" * (60 << 10))
        status = main(["init-prior", "--config", str(tmp_path / "job.json"), "--experiment", "digits",
                       "--variant", "diem_tweedie", "--observations", str(tmp_path / "observations.h5"),
                       "--out", str(mnt / "model.pt")])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 1 and err[-1].startswith(f"error: {mnt}/model.pt: no space left on device"), err
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
