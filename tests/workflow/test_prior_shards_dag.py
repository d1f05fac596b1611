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
    manifold["evaluate"]["iterations"] = "final"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                           str(tmp_path / "config.yaml"), "-d", str(tmp_path), "-n", "all"],
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    text = plan.stdout + plan.stderr
    counts = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M)}
    # digits: 2 variants x iterations {1, 3} (the listed one and the final one) x 2 shards; manifold: k = 2
    assert counts["prior_samples_shard"] == 8 and counts["gather_prior_samples"] == 4
    assert counts["prior_samples"] == 1 and counts["iteration_metrics"] == 5
    assert counts["estep_shard"] == 2 * 3 * 2 + 2 * 2 and counts["mstep"] == 2 * 3 + 2  # EM itself is all there
    outputs = set(re.findall(r"^\s+output: (\S+)", text, flags=re.M))
    for var in ("diem_tweedie", "diem_sigma_t"):
        d = f"results-tiny/digits/{var}"
        assert {f"{d}/iter_{k:03d}/prior_samples/shard_{j}.h5" for k in (1, 3) for j in (0, 1)} <= outputs
        assert {f"{d}/iter_{k:03d}/metrics.json" for k in (1, 3)} <= outputs
        assert not any(o.startswith((f"{d}/iter_000/prior", f"{d}/iter_002/prior", f"{d}/iter_000/metrics",
                                     f"{d}/iter_002/metrics")) for o in outputs)
    assert "results-tiny/manifold/diem_tweedie/iter_002/prior_samples.h5" in outputs
    assert "results-tiny/manifold/diem_tweedie/iter_002/prior_samples/shard_0.h5" not in outputs
