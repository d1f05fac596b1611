"""Benchmark: the M-step with subnormal floats flushed to zero (what `python -m emprior` sets) vs
PyTorch's default, on a finished run's real inputs. Not part of the tests.

    python benchmarks/denormals.py RESULTS_DIR [--experiment manifold] [--variant diem_tweedie] [--iteration 3]

Trains iteration k's M-step (`emprior.pipeline.em.mstep`: iteration k-1's model.pt, iteration k's posterior.h5)
twice per mode, interleaved, in one process, and prints the median wall times and their ratio. Random
data from a fresh network hardly produces subnormals; a warm-started network on posterior samples does
(SiLU of very negative pre-activations, tiny gradients), which is why this needs a finished run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from emprior.config.loading import load_config
    from emprior.core.job import Job
    from emprior.pipeline import em

    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "config" / "config.yaml"))
    ap.add_argument("--experiment", default="manifold")
    ap.add_argument("--variant", default="diem_tweedie")
    ap.add_argument("--iteration", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config)
    run = args.results / args.experiment / args.variant
    previous = run / f"iter_{args.iteration - 1:03d}" / "model.pt"
    posterior = run / f"iter_{args.iteration:03d}" / "posterior.h5"
    for path in (previous, posterior):
        if not path.exists():
            raise SystemExit(f"error: {path} not found (run the DAG first)")
    torch.set_num_threads(1)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for flush in (False, True) if r % 2 == 0 else (True, False):
                torch.set_flush_denormal(flush)
                t0 = time.perf_counter()
                em.mstep(Job(cfg, args.experiment, args.variant, args.iteration),
                         str(Path(tmp) / f"model_{flush}_{r}.pt"),
                         posterior=str(posterior), previous=str(previous))
                seconds[flush].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
    res = {"experiment": args.experiment, "iteration": args.iteration, "mstep_s_default": med[False],
           "mstep_s_flush_denormal": med[True], "speedup": med[False] / med[True]}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
