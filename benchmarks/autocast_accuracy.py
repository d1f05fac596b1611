"""Benchmark: MMPS(1) posterior samples with the denoiser under bf16 autocast vs float32, on an analytic
Gaussian prior (emprior.studies.autocast_accuracy, whose docstring defines the numbers). Not a test.

    PYTHONPATH=src python benchmarks/autocast_accuracy.py [--out benchmarks/autocast_accuracy.json]

Runs the settings below (the network form at n = 1024 and 8192 samples and T = 64 and 256 steps; the
whole closed-form denoiser under autocast for contrast), prints one JSON line per run and writes all of
them, with the git commit, to --out. docs/precision.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RUNS = [
    {"form": "network", "n": 1024, "steps": 64},
    {"form": "network", "n": 8192, "steps": 64},
    {"form": "network", "n": 1024, "steps": 256},
    {"form": "network", "n": 1024, "steps": 64, "noise_std": 0.01},
    {"form": "denoiser", "n": 1024, "steps": 64},
]


def main() -> None:
    from emprior.core.provenance import git_commit
    from emprior.studies.autocast_accuracy import measure

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("autocast_accuracy.json")))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    results = []
    for kw in RUNS:
        start = time.perf_counter()
        res = measure(**kw)
        res["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(res), flush=True)
        results.append(res)
    Path(args.out).write_text(json.dumps({"commit": git_commit(), "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
