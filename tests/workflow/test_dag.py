"""The whole DAG on config/tiny.yaml in a temporary folder: Snakemake itself is exercised in CI.

One run (module-scoped fixture, ~1-3 min on 2 cores) is checked for: every iteration's artifacts with
provenance and checksums, a second `snakemake -n` with nothing to do, the audit table, and that deleting
one shard recomputes only that shard and what depends on it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
         str(REPO / "config" / "tiny.yaml")]

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKE + ["-d", str(workdir), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    out = snakemake(workdir, "-c", "2", "all")
    if out.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in (workdir / "results-tiny" / "logs").rglob("*.log")
                         if "Error" in p.read_text() or "error" in p.read_text())
        pytest.fail(f"snakemake failed:\n{out.stderr[-4000:]}\n{logs}")
    return workdir


def test_every_iteration_has_its_artifacts(run_dir):
    results = run_dir / "results-tiny"
    for exp, variants, iters in [("manifold", ["diem_tweedie"], 2), ("digits", ["diem_tweedie", "diem_sigma_t"], 1)]:
        for var in variants:
            for k in range(iters + 1):
                d = results / exp / var / f"iter_{k:03d}"
                names = ["model.pt", "prior_samples.h5", "metrics.json"] + (["posterior.h5"] if k else [])
                for name in names:
                    assert (d / name).exists(), d / name
                    side = json.loads((d / f"{name}.prov.json").read_text())
                    assert len(side["sha256"]) == 64
                    assert side["provenance"]["config_digest"] and side["provenance"]["versions"]["torch"]
                m = json.loads((d / "metrics.json").read_text())
                assert m["iteration"] == k and m["quality"]["sinkhorn"] is not None
                if exp == "digits":  # FID/IS stand-ins in digits-classifier features
                    assert m["quality"]["fd_digits"] >= 0 and 1 <= m["quality"]["is_digits"] <= 10
                if k == 1:  # the first E-step against the exact posterior under the Gaussian q_0
                    c = m["estep_check"]
                    assert (d / "estep_check.json").exists() and c["observations"] == 16 and c["repeats"] == 4
                    assert 0.2 < c["spread"] < 3 and c["bias2_se"] > 0
                    assert m["artifacts"]["estep_check.json"] == json.loads(
                        (d / "estep_check.json.prov.json").read_text())["sha256"]
                if k:
                    assert 0 < m["estep"]["residual_ratio_mean"] < 1e6
                    assert len(m["estep"]["shards"]) == 2
                    assert m["mstep"]["loss"]["last"] > 0
    for name in ["tables/table1.csv", "tables/table1.md", "tables/table1.tex", "fig2/sinkhorn.csv",
                 "figures/fig2_sinkhorn.png", "figures/fig3_manifold.png", "figures/digits_metrics.png",
                 # Table 1's experiment (digits): Figs. 4, 5 and the posterior samples along iterations
                 "figures/fig4_digits.png", "figures/fig5_digits.png", "figures/fig5_digits.h5",
                 "figures/posterior_digits.png"]:
        assert (results / name).stat().st_size > 0, name


def test_nothing_to_do_after_a_finished_run(run_dir):
    out = snakemake(run_dir, "-n", "all")
    assert out.returncode == 0
    assert "Nothing to be done" in out.stdout + out.stderr


def test_audit_prints_one_row_per_iteration(run_dir):
    out = subprocess.run([sys.executable, "-m", "emprior", "audit", str(run_dir / "results-tiny")],
                         capture_output=True, text=True, timeout=120)
    rows = [l for l in out.stdout.splitlines() if re.match(r"\s*(manifold|digits)\s", l)]
    assert len(rows) == 3 + 2 * 2 + 3, out.stdout  # + one E-step check row per variant
    assert "iterations" in out.stdout and "exact posterior under q_0" in out.stdout


def test_run_claims_its_folder_and_rerun_reproduces_a_model(run_dir):
    """The run recorded its config as the folder's owner; `rerun` redoes one M-step from its sidecar's
    command line in a temporary folder and gets model.pt back byte for byte."""
    results = run_dir / "results-tiny"
    assert json.loads((results / ".config" / "owner.json").read_text()) == {"config": "config/tiny.yaml"}
    model = results / "manifold" / "diem_tweedie" / "iter_001" / "model.pt"
    side = json.loads((model.parent / "model.pt.prov.json").read_text())
    job = side["job"]
    assert job["args"][0] == "mstep" and Path(run_dir / job["config_file"]).exists()
    # the job config file is named by the first 16 hex digits of the sidecar's config_digest
    assert Path(job["config_file"]).name == side["provenance"]["config_digest"][:16] + ".json"
    out = subprocess.run([sys.executable, "-m", "emprior", "rerun", str(model)], capture_output=True, text=True,
                         timeout=300)
    assert (out.returncode, out.stdout.strip()) == (0, f"identical: {model}"), out.stderr[-2000:]


def test_deleting_a_shard_recomputes_only_its_descendants(run_dir):
    shard = run_dir / "results-tiny" / "digits" / "diem_tweedie" / "iter_001" / "posterior" / "shard_1.h5"
    before = h5py.File(shard, "r")["x"][()]
    shard.unlink()
    out = snakemake(run_dir, "-n", "all")
    text = out.stdout + out.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    assert counts.get("estep_shard") == "1", text
    assert counts.get("gather_posterior") == "1" and counts.get("mstep") == "1"
    assert "init_prior" not in counts and "dataset" not in counts and "observe" not in counts
    assert "estep_check" not in counts  # it reads q_0 and the observations only
    # actually rerun it: the same seeds give the same shard back, bit for bit
    out = snakemake(run_dir, "-c", "2", "all")
    assert out.returncode == 0, out.stderr[-3000:]
    after = h5py.File(shard, "r")["x"][()]
    assert after.tobytes() == before.tobytes()
