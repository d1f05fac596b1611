"""A dry run (`snakemake -n`, no job runs) plans sharded prior samples and only the evaluated
iterations: digits with evaluate.shards = 2 and iterations [1] (of 3), manifold with iterations: final
and one shard (the unsharded prior_samples rule)."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_plans_prior_sample_shards_of_the_evaluated_iterations(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg.pop("fig2")
    digits, manifold = cfg["experiments"]["digits"], cfg["experiments"]["manifold"]
    digits["iterations"] = 3
    digits["evaluate"].update(shards=2, iterations=[1])
    digits["variants"]["dfm"] = {"method": "diffem"}  # a method with a final stage (rules/diffem.smk)
    manifold["evaluate"]["iterations"] = "final"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                           str(tmp_path / "config.yaml"), "-d", str(tmp_path), "-n", "all"],
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    text = plan.stdout + plan.stderr
    counts = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M)}
    # digits: 3 variants x iterations {1, 3} (the listed one and the final one) x 2 shards; manifold: k = 2
    assert counts["prior_samples_shard"] == 12 and counts["gather_prior_samples"] == 6
    assert counts["prior_samples"] == 1 and counts["iteration_metrics"] == 7
    assert counts["estep_shard"] == 3 * 3 * 2 + 2 * 2 and counts["mstep"] == 3 * 3 + 2  # EM itself is all there
    # DiffEM's final stage: the last model's E-step (2 shards), a fresh model on it, its samples and metrics
    assert counts["final_estep_shard"] == 2 and counts["final_gather_posterior"] == 1
    assert counts["final_model"] == counts["final_prior_samples"] == counts["final_iteration_metrics"] == 1
    outputs = set(re.findall(r"^\s+output: (\S+)", text, flags=re.M))
    assert {f"results-tiny/digits/dfm/final/{f}" for f in ("model.pt", "prior_samples.h5", "metrics.json")} <= outputs
    inputs = re.findall(r"^\s+input: (.+)$", text, flags=re.M)
    final_model_inputs = [i for i in inputs if "dfm/final/posterior.h5" in i]
    assert any("results-tiny/digits/dfm/iter_003/model.pt" in i for i in final_model_inputs)  # drawn by the last model
    table1 = re.findall(r"rule table1:\n\s+input: (.+)$", text, flags=re.M)  # Table 1 scores the final model
    assert len(table1) == 1 and "dfm/final/metrics.json" in table1[0] and "dfm/iter_003/metrics" not in table1[0]
    for var in ("diem_tweedie", "diem_sigma_t"):
        d = f"results-tiny/digits/{var}"
        assert {f"{d}/iter_{k:03d}/prior_samples/shard_{j}.h5" for k in (1, 3) for j in (0, 1)} <= outputs
        assert {f"{d}/iter_{k:03d}/metrics.json" for k in (1, 3)} <= outputs
        assert not any(o.startswith((f"{d}/iter_000/prior", f"{d}/iter_002/prior", f"{d}/iter_000/metrics",
                                     f"{d}/iter_002/metrics")) for o in outputs)
    assert "results-tiny/manifold/diem_tweedie/iter_002/prior_samples.h5" in outputs
    assert "results-tiny/manifold/diem_tweedie/iter_002/prior_samples/shard_0.h5" not in outputs
