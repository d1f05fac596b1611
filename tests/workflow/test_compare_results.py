"""benchmarks/compare_results.py: two tiny results folders, identical up to provenance and timings."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_results.py"
ITER = "digits/diem_inv/iter_001"


def _load_module():
    spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cr = _load_module()


def _prov(commit: str) -> str:
    return json.dumps({"git_commit": commit, "config_digest": commit * 2, "rule": "x",
                       "versions": {"numpy": "2"}}, sort_keys=True)


def make_results(root: Path, commit: str, seconds: float) -> Path:
    """A results folder shaped like emprior's; ``commit``/``seconds`` only reach provenance and timings."""
    rng = np.random.default_rng(0)
    (root / "digits/data").mkdir(parents=True)
    with h5py.File(root / "digits/data/observations.h5", "w", track_order=True) as f:
        f["index"] = np.arange(6, dtype=np.int64)
        f["op/mask"] = rng.random((6, 4, 4)) > 0.5
        y = rng.standard_normal((6, 1, 4, 4)).astype(np.float32)
        y[0, 0, 0, 0], y[0, 0, 0, 1] = np.nan, -0.0
        f["y"] = y
        f.attrs["operator"] = json.dumps({"kind": "pixel_mask", "noise_std": 0.001, "x_shape": [1, 4, 4]})
        f.attrs["seed"] = np.int64(0)
        f.attrs["provenance"] = _prov(commit)
    shards = root / ITER / "posterior"
    shards.mkdir(parents=True)
    for j in range(2):
        with h5py.File(shards / f"shard_{j}.h5", "w") as f:
            f["x"] = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
            f.attrs["shard"] = np.int64(j)
            f.attrs["provenance"] = _prov(commit)
    with h5py.File(root / ITER / "posterior.h5", "w") as f:
        f["x"] = rng.standard_normal((6, 1, 4, 4)).astype(np.float32)
        f["residual_ratio"] = rng.random(6).astype(np.float32)
        # the shard digests hash files that carry the commit: they differ, and are ignored
        f.attrs["shards"] = json.dumps([{"file": f"shard_{j}.h5", "sha256": commit + str(j), "blocks": [j]}
                                        for j in range(2)])
        f.attrs["iteration"] = np.int64(1)
        f.attrs["provenance"] = _prov(commit)
    g = torch.Generator().manual_seed(0)
    ckpt = {
        "kind": "denoiser", "x_shape": [1, 4, 4],
        "net": {"hid_channels": [4, 8], "dropout": 0.0},
        "weights": {"net": {"blocks": [{"weight": torch.randn(4, 3, generator=g)},
                                       {"weight": torch.randn(8, 4, generator=g),
                                        "bias": torch.zeros(8, dtype=torch.bfloat16)}]},
                    "steps": torch.tensor(800)},
        "train": {"loss": [1.5, 1.25, float("nan")], "steps": 800},
        "provenance": _prov(commit),
    }
    torch.save(ckpt, root / ITER / "model.pt")
    torch.save({"step": int(seconds)}, root / ITER / "model.resume.pt")  # resume points: skipped
    metrics = {"iteration": 1, "quality": {"fd": 1.234567, "fid": None, "status": "ok"},
               "mstep": {"loss": {"curve": [1.5, 1.25]}},
               "artifacts": {"model.pt": commit * 3},
               "timing": {"model": {"seconds": seconds}}, "provenance": json.loads(_prov(commit))}
    (root / ITER / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (root / ITER / "estep_check.json").write_text(json.dumps(
        {"bias2": 0.0365, "spread": 0.8, "seconds": seconds, "provenance": json.loads(_prov(commit))}))
    (root / "tables").mkdir()
    pd.DataFrame({"method": ["DPS", "DiffPIR", "GDM"], "psnr": [12.5, 13.25, np.nan], "steps": [10, 10, 20],
                  "time_ms": [seconds, 2 * seconds, 3.0], "git_commit": [commit] * 3}
                 ).to_csv(root / "tables/table1.csv", index=False)
    (root / "tables/table1.md").write_text(f"| method | time |\n| DPS | {seconds} |\n")
    # things that differ between runs and are skipped
    for rel, text in {"logs/digits/x.log": str(seconds), "benchmarks/estep.tsv": f"s\n{seconds}\n",
                      "figures/fig.png": commit, f"{ITER}/model.pt.prov.json": commit,
                      ".config/abc.json": commit, ".snakemake/log.txt": commit}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def folders(tmp_path):
    a = make_results(tmp_path / "a", "1111aaaa", 1.5)
    b = make_results(tmp_path / "b", "2222bbbb", 7.25)
    return a, b


def run(capsys, *args) -> tuple[int, str]:
    rc = cr.main([str(x) for x in args])
    return rc, capsys.readouterr().out


def first_difference(out: str) -> tuple[str, str, str]:
    lines = out.splitlines()
    i = lines.index("first difference:")
    return tuple(lines[i + k].split(":", 1)[1].strip() for k in (1, 2, 3))


def test_identical_up_to_provenance_and_timing(folders, capsys):
    rc, out = run(capsys, *folders)
    assert rc == 0, out
    last = out.strip().splitlines()[-1]
    # arrays: 7 HDF5 datasets (observations 3, shards 2, posterior 2), 4 tensors, 3 table columns
    assert last == "IDENTICAL: 14 arrays in 8 files", out
    assert "HDF5:        4 files, 7 datasets, 13 attr values" in out
    assert "checkpoints: 1 files, 4 tensors" in out
    assert "tables:      1 files, 3 columns, 9 cells" in out
    assert "0 differences" in out and "DIFFERENT" not in out


def _bit_flip(b: Path) -> None:
    with h5py.File(b / "digits/data/observations.h5", "r+") as f:
        y = f["y"][()]
        y.view(np.uint32)[2, 0, 1, 3] += 1  # one ulp
        f["y"][...] = y


def _negative_zero(b: Path) -> None:  # np.array_equal would call this equal
    with h5py.File(b / "digits/data/observations.h5", "r+") as f:
        f["y"][0, 0, 0, 1] = 0.0


def _dtype(b: Path) -> None:
    with h5py.File(b / ITER / "posterior.h5", "r+") as f:
        x = f["x"][()]
        del f["x"]
        f["x"] = x.astype(np.float64)  # same values


def _tensor(b: Path) -> None:
    p = b / ITER / "model.pt"
    ckpt = torch.load(p, weights_only=True)
    ckpt["weights"]["net"]["blocks"][1]["weight"][5, 2] += 1e-6
    torch.save(ckpt, p)


def _cell(b: Path) -> None:
    p = b / "tables/table1.csv"
    t = pd.read_csv(p)
    t.loc[1, "psnr"] = 13.2500001
    t.to_csv(p, index=False)


def _metric(b: Path) -> None:
    p = b / ITER / "metrics.json"
    m = json.loads(p.read_text())
    m["quality"]["fd"] = 1.234568
    p.write_text(json.dumps(m))


def _missing(b: Path) -> None:
    (b / ITER / "posterior/shard_1.h5").unlink()


def _json_attr(b: Path) -> None:
    with h5py.File(b / "digits/data/observations.h5", "r+") as f:
        f.attrs["operator"] = json.dumps({"kind": "pixel_mask", "noise_std": 0.002, "x_shape": [1, 4, 4]})


@pytest.mark.parametrize("mutate, file, key, what", [
    (_bit_flip, "digits/data/observations.h5", "y", "1 of 96 elements differ; first at index (2, 0, 1, 3)"),
    (_negative_zero, "digits/data/observations.h5", "y",
     "first at index (0, 0, 0, 1): A=np.float32(-0.0) B=np.float32(0.0)"),
    (_dtype, f"{ITER}/posterior.h5", "x", "dtype float32 vs float64"),
    (_tensor, f"{ITER}/model.pt", "weights/net/blocks[1]/weight", "first at index (5, 2)"),
    (_cell, "tables/table1.csv", "row 1, column 'psnr'", "A=13.25 B=13.2500001"),
    (_metric, f"{ITER}/metrics.json", "quality/fd", "A=1.234567 B=1.234568"),
    (_missing, f"{ITER}/posterior/shard_1.h5", "/", "file only in A"),
    (_json_attr, "digits/data/observations.h5", "@operator/noise_std", "A=0.001 B=0.002"),
], ids=["float-ulp", "negative-zero", "dtype", "nested-tensor", "table-cell", "metric", "missing-file", "json-attr"])
def test_one_difference(folders, capsys, mutate, file, key, what):
    a, b = folders
    mutate(b)
    rc, out = run(capsys, a, b)
    assert rc == 1, out
    got_file, got_key, got_what = first_difference(out)
    assert (got_file, got_key) == (file, key), out
    assert what in got_what, out
    assert out.strip().splitlines()[-1].startswith("DIFFERENT: 1 differences in 1 files"), out


def test_max_diffs_and_counts(folders, capsys):
    a, b = folders
    for mutate in (_bit_flip, _tensor, _cell, _metric, _missing):
        mutate(b)
    rc, out = run(capsys, a, b, "--max-diffs", "2")
    assert rc == 1
    assert "differences (2 of 5 listed):" in out
    assert out.strip().splitlines()[-1].startswith("DIFFERENT: 5 differences in 5 files")


def test_ignore_options(folders, capsys):
    a, b = folders
    rc, out = run(capsys, a, b, "--tables-ignore", "")  # time_ms and git_commit now count
    assert rc == 1 and "column 'time_ms'" in out
    rc, out = run(capsys, a, b, "--json-ignore", "provenance")  # timing and digests now count
    assert rc == 1 and "timing/model/seconds" in out and "@shards[0]/sha256" in out


def test_bad_arguments_subprocess(folders, tmp_path):
    a, _ = folders
    missing = tmp_path / "nope"
    res = subprocess.run([sys.executable, str(SCRIPT), str(a), str(missing)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error:") and str(missing) in res.stderr
    res = subprocess.run([sys.executable, str(SCRIPT), str(a), str(a)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1].startswith("IDENTICAL: 14 arrays")


def test_sizes_of_differences(folders, capsys):
    """Beside the bytes: the largest absolute and relative difference per array, per table cell and over the
    run, computed from known perturbations."""
    a, b = folders
    with h5py.File(a / ITER / "posterior.h5", "r") as f:
        x = f["x"][()]
    with h5py.File(b / ITER / "posterior.h5", "r+") as f:
        y = x.copy()
        y[0, 0, 0, 0] = x[0, 0, 0, 0] + 0.5
        y[1, 0, 1, 1] = x[1, 0, 1, 1] * (1 + 1e-3)
        f["x"][...] = y
    _cell(b)  # 13.25 -> 13.2500001
    rc, out = run(capsys, a, b)
    assert rc == 1, out
    d = np.abs(y.astype(np.float64) - x)
    rel = d / np.maximum(np.abs(x), np.abs(y))
    want = f"max |A-B| = {d.max():.3g}, max relative = {rel.max():.3g}"
    line = next(ln for ln in out.splitlines() if f"{ITER}/posterior.h5 :: x ::" in ln)
    assert want in line, out
    cell = next(ln for ln in out.splitlines() if "table1.csv" in ln)
    assert f"psnr; max |A-B| = {1e-7:.3g}, max relative = {1e-7 / 13.2500001:.3g}" in cell, out
    assert f"largest numeric difference: relative {rel.max():.3g}, absolute {d[rel == rel.max()][0]:.3g}" in out, out
