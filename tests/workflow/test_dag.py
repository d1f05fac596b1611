"""The whole DAG on config/tiny.yaml in a temporary folder: Snakemake itself is exercised in CI.

One run (module-scoped fixture, ~1-3 min on 2 cores) is checked for: every iteration's artifacts with
provenance and checksums, a second `snakemake -n` with nothing to do, the audit table, and that deleting
one shard recomputes only that shard and what depends on it. Digits runs two seeds (the overlay
config/tiny_seeds.yaml): both branches are written, Table 1 and Fig. 4 are over seeds, and the seed-1
branch's jobs are those of the whole config run with ``seed: 1``."""

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
         str(REPO / "config" / "tiny.yaml"), str(REPO / "config" / "tiny_seeds.yaml")]

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKE + ["-d", str(workdir), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    out = snakemake(workdir, "-c", "2", "all", timeout=1800)  # two digits seeds; a loaded machine is slow
    if out.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in (workdir / "results-tiny" / "logs").rglob("*.log")
                         if "Error" in p.read_text() or "error" in p.read_text())
        pytest.fail(f"snakemake failed:\n{out.stderr[-4000:]}\n{logs}")
    return workdir


def test_every_iteration_has_its_artifacts(run_dir):
    results = run_dir / "results-tiny"
    digits = ["diem_tweedie", "diem_sigma_t"]
    for exp, variants, iters in [("manifold", ["diem_tweedie"], 2), ("digits/seed_0", digits, 1),
                                 ("digits/seed_1", digits, 1)]:
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
                if exp.startswith("digits"):  # FID/IS stand-ins in digits-classifier features
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
                 "figures/fig2_sinkhorn.png", "figures/fig3_manifold.png", "figures/digits/seed_0_metrics.png",
                 # Table 1's experiment (digits): Fig. 4 over seeds; Fig. 5 and the posterior samples along
                 # iterations per seed
                 "figures/fig4_digits.png", "figures/fig5_digits/seed_1.png", "figures/fig5_digits/seed_1.h5",
                 "figures/posterior_digits/seed_0.png"]:
        assert (results / name).stat().st_size > 0, name


def test_table1_is_over_both_seeds_with_q0_beside_the_final_score(run_dir):
    results = run_dir / "results-tiny"
    table = pd.read_csv(results / "tables" / "table1.csv")
    ours = table[table.variant.notna()].set_index("variant")
    assert list(ours.index) == ["diem_tweedie", "diem_sigma_t"] and (ours.seeds == 2).all()
    for v in ours.index:
        final = [json.loads((results / "digits" / f"seed_{s}" / v / "iter_001" / "metrics.json").read_text())
                 for s in (0, 1)]
        q0 = [json.loads((results / "digits" / f"seed_{s}" / v / "iter_000" / "metrics.json").read_text())
              for s in (0, 1)]
        a, b = (m["quality"]["sinkhorn"] for m in final)
        assert a != b  # two seeds, two runs
        assert ours.loc[v].sinkhorn == pytest.approx((a + b) / 2)
        assert ours.loc[v].sinkhorn_ci95 == pytest.approx(12.706204736 * abs(a - b) / 2, rel=1e-6)
        assert ours.loc[v].q0_iteration == 0 and ours.loc[v].iterations == 1
        assert ours.loc[v].q0_sinkhorn == pytest.approx(sum(m["quality"]["sinkhorn"] for m in q0) / 2)
        assert ours.loc[v].q0_fd_digits_ci95 > 0 and len(ours.loc[v].fd_digits_per_seed.split("; ")) == 2
    assert "Student-t" in (results / "tables" / "table1.md").read_text()


def test_the_seed_1_branch_is_the_whole_config_run_with_seed_1(run_dir, tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())  # without the seeds overlay
    cfg["seed"] = 1
    (tmp_path / "seed1.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                          str(tmp_path / "seed1.yaml"), "-d", str(tmp_path), "-n", "-p", "all"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # each digits job planned there: the digest of the job config it is given, and its output
    text = out.stdout + out.stderr
    planned = re.findall(r"--config results-tiny/\.config/([0-9a-f]{16})\.json[^\n]*?--out (results-tiny/digits/\S+)",
                         text)
    assert len(planned) >= 10, text[-3000:]
    for digest, path in planned:
        branch = run_dir / path.replace("results-tiny/digits/", "results-tiny/digits/seed_1/", 1)
        side = json.loads(Path(f"{branch}.prov.json").read_text())
        assert side["provenance"]["config_digest"][:16] == digest, path  # the same job config
        if not path.endswith("/data/clean.h5"):  # the dataset rule records its own stream's derived seed
            assert side["provenance"]["seed"] == 1, path


def test_nothing_to_do_after_a_finished_run(run_dir):
    out = snakemake(run_dir, "-n", "all")
    assert out.returncode == 0
    assert "Nothing to be done" in out.stdout + out.stderr


def test_audit_prints_one_row_per_iteration(run_dir):
    out = subprocess.run([sys.executable, "-m", "emprior", "audit", str(run_dir / "results-tiny")],
                         capture_output=True, text=True, timeout=120)
    rows = [l for l in out.stdout.splitlines() if re.match(r"\s*(manifold|digits/seed_[01])\s", l)]
    assert len(rows) == 3 + 2 * 2 * 2 + 5, out.stdout  # + one E-step check row per variant and seed
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
    shard = run_dir / "results-tiny" / "digits" / "seed_1" / "diem_tweedie" / "iter_001" / "posterior" / "shard_1.h5"
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


def test_audit_flags_and_repair_rebuilds_damaged_artifacts(run_dir):
    """A deleted model.pt, a flipped byte in a posterior shard and in observations.h5: the audit flags each
    (exit 1), `emprior repair` removes them, and the README's command rebuilds exactly them and their
    descendants; the model and the shard come back with the same bytes."""
    import os
    import shutil

    res = run_dir / "results-tiny"
    model = res / "digits" / "seed_0" / "diem_tweedie" / "iter_001" / "model.pt"
    shard = res / "digits" / "seed_1" / "diem_sigma_t" / "iter_001" / "posterior" / "shard_0.h5"
    obs = res / "manifold" / "data" / "observations.h5"
    before = {p: p.read_bytes() for p in (model, shard)}
    keep = run_dir / "kept"
    keep.mkdir()
    for p in (obs, Path(str(obs) + ".prov.json")):
        shutil.copy2(p, keep / p.name)
    model.unlink()
    for p in (shard, obs):
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    emprior = [sys.executable, "-m", "emprior"]
    out = subprocess.run(emprior + ["audit", str(res)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    flagged = out.stdout[out.stdout.index("FLAG files"):]
    assert "digits/seed_0/diem_tweedie/iter_001/model.pt" in flagged and "missing" in flagged
    assert "digits/seed_1/diem_sigma_t/iter_001/posterior/shard_0.h5" in flagged
    assert "manifold/data/observations.h5" in flagged and "checksum mismatch" in flagged
    out = subprocess.run(emprior + ["repair", str(res)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.count("removed ") == 3, out.stdout + out.stderr
    # the damaged observations would rebuild the whole manifold chain: check the plan, then put the file
    # back as it was (bytes and time) and rerun the rest for real
    plan = snakemake(run_dir, "-n", "all")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.stdout + plan.stderr, flags=re.M))
    assert counts.get("observe") == "1" and counts.get("mstep") == str(2 + 2), plan.stdout  # manifold 2, digits 2
    assert "dataset" not in counts, plan.stdout
    for name in (obs.name, obs.name + ".prov.json"):
        shutil.copy2(keep / name, obs.parent / name)
    os.utime(obs, ns=(os.stat(keep / obs.name).st_atime_ns, os.stat(keep / obs.name).st_mtime_ns))
    plan = snakemake(run_dir, "-n", "all")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.stdout + plan.stderr, flags=re.M))
    assert counts.get("estep_shard") == "1" and counts.get("mstep") == "2", plan.stdout  # the shard's and the model's
    assert "observe" not in counts and "init_prior" not in counts, plan.stdout
    out = snakemake(run_dir, "-c", "2", "all")
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p: p.read_bytes() for p in (model, shard)} == before
    out = subprocess.run(emprior + ["audit", str(res)], capture_output=True, text=True, timeout=300)
    assert "every artifact with a sidecar is present" in out.stdout, out.stdout
