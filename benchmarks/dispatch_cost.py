"""What the portable CPU pins cost: the same digits E-step shard and M-step job, run as ``python -m emprior``
jobs with ``reproducibility.cpu_dispatch: portable`` (the default) and ``native``, interleaved, timed by
the CPU time of the child process (user + sys, which a busy machine inflates less than wall time).

    python benchmarks/dispatch_cost.py [--pairs 3] [--out benchmarks/dispatch_cost.json]

The jobs use config/config.yaml's digits experiment (its U-Net, 48-step E-step) with a shorter M-step
(``--mstep-steps``, default 200) and one shard of ``--observations`` (default 250) observations, so a pair
takes about a minute on 2 idle cores. Prints and writes the median portable/native ratio per job kind and
every pair; also whether the two modes gave the same bytes (they should not on an AVX-512 machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WATCHED = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")


def child_cpu(cmd: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: {' '.join(cmd[3:5])} exited with status {out.returncode}: {tail}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--mstep-steps", type=int, default=200)
    ap.add_argument("--observations", type=int, default=250)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "dispatch_cost.json"))
    args = ap.parse_args(argv)

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    exp = cfg["experiments"]["digits"]
    exp["variants"] = {"diem_tweedie": exp["variants"]["diem_tweedie"]}
    exp["estep"].update(shards=max(1, 1000 // args.observations), block_size=args.observations)
    exp["mstep"]["steps"] = args.mstep_steps
    cfg = {k: cfg[k] for k in ("seed", "results", "torch_threads")} | {"experiments": {"digits": exp}}
    env = {k: v for k, v in os.environ.items() if k not in WATCHED}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    py = [sys.executable, "-m", "emprior"]
    ids = ["--experiment", "digits", "--variant", "diem_tweedie"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        confs = {}
        for mode in ("portable", "native"):
            confs[mode] = d / f"{mode}.json"
            confs[mode].write_text(json.dumps({**cfg, "reproducibility": {"cpu_dispatch": mode}}))
        c = str(confs["portable"])
        for cmd in (["dataset", "--config", c, "--experiment", "digits", "--out", str(d / "clean.h5")],
                    ["observe", "--config", c, "--experiment", "digits", "--clean", str(d / "clean.h5"),
                     "--out", str(d / "obs.h5")],
                    ["init-prior", "--config", c, *ids, "--observations", str(d / "obs.h5"), "--out", str(d / "m0.pt")],
                    ["estep", "--config", c, *ids, "--iteration", "1", "--shard", "0", "--model", str(d / "m0.pt"),
                     "--observations", str(d / "obs.h5"), "--out", str(d / "s0.h5")],
                    ["gather", "--config", c, *ids, "--iteration", "1", "--out", str(d / "post.h5"), str(d / "s0.h5")]):
            child_cpu(py + cmd, env)
        times: dict[str, dict[str, list[float]]] = {"mstep": {"portable": [], "native": []},
                                                    "estep": {"portable": [], "native": []}}
        for i in range(args.pairs):
            for mode in (("portable", "native") if i % 2 == 0 else ("native", "portable")):
                c = str(confs[mode])
                times["mstep"][mode].append(child_cpu(py + [
                    "mstep", "--config", c, *ids, "--iteration", "1", "--posterior", str(d / "post.h5"),
                    "--out", str(d / f"m1_{mode}.pt")], env))
                times["estep"][mode].append(child_cpu(py + [
                    "estep", "--config", c, *ids, "--iteration", "2", "--shard", "0", "--model",
                    str(d / f"m1_{mode}.pt"), "--observations", str(d / "obs.h5"), "--out", str(d / f"s_{mode}.h5")],
                    env))
                for f in (d / f"m1_{mode}.pt", d / f"s_{mode}.h5"):
                    f.rename(f.with_name(f"{f.stem}_{i}{f.suffix}"))
        import torch

        def weights(p: Path) -> dict:
            return torch.load(p, weights_only=True)["weights"]

        same = all(all(torch.equal(a, b) for a, b in zip(weights(d / f"m1_portable_{i}.pt").values(),
                                                          weights(d / f"m1_native_{i}.pt").values()))
                   for i in range(args.pairs))
    result = {"pairs": args.pairs, "mstep_steps": args.mstep_steps, "observations": args.observations,
              "cpu_seconds": times, "same_model_weights": same}
    for kind, t in times.items():
        ratios = [p / n for p, n in zip(t["portable"], t["native"])]
        result[f"{kind}_ratio_median"] = statistics.median(ratios)
        print(f"{kind}: portable / native CPU time, median {statistics.median(ratios):.3f} "
              f"(pairs {', '.join(f'{r:.3f}' for r in ratios)}; portable {t['portable']}, native {t['native']})")
    print(f"same model weights in both modes: {same}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
