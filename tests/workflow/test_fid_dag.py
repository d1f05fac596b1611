"""The FID reference-statistics job in the DAG: one per experiment with evaluate.fid, an input of that
experiment's metrics jobs, none elsewhere (one dry run of the tiny config with FID on for digits)."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_fid_reference_job_per_fid_experiment_feeds_its_metrics_jobs(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg["experiments"]["digits"]["evaluate"]["fid"] = True  # manifold: off
    weights = tmp_path / "weights" / "inception.pth"  # absent: recorded as the reason, not an input
    cfg["metrics"] = {"inception_weights": str(weights)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                          str(tmp_path / "config.yaml"), "-d", str(tmp_path), "-n", "-p", "all"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    jobs = re.findall(r"^rule (\w+):\n    input: ([^\n]*)\n.*?^Shell command: ([^\n]*)", text, flags=re.M | re.S)
    ref = [(inp, cmd) for rule, inp, cmd in jobs if rule == "fid_reference"]
    assert len(ref) == 1, [r for r, _, _ in jobs]
    assert ref[0][0] == "results-tiny/digits/data/clean.h5" and f"--weights {weights} " in ref[0][1]
    metrics = [(inp, cmd) for rule, inp, cmd in jobs if rule == "iteration_metrics"]
    digits = [m for m in metrics if "results-tiny/digits/" in m[0]]
    assert len(digits) == 4 and len(metrics) == 7  # digits: 2 variants x iterations 0, 1; manifold: 3
    for inp, cmd in metrics:
        on = "results-tiny/digits/" in inp
        assert ("results-tiny/digits/data/fid_reference.h5" in inp) == on
        assert ("--fid-reference results-tiny/digits/data/fid_reference.h5" in cmd) == on
