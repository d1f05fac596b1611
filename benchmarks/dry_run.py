"""Time of the paper-scale dry run (``snakemake --profile slurm -n all``) beside Snakemake's own floor.

    python benchmarks/dry_run.py [--repeats 3] [--out benchmarks/dry_run.json]

Dry runs measured side by side in one run (best of ``--repeats``, interleaved, wall and CPU seconds):

* ``paper``: the command users run, config/paper.yaml with every experiment and variant;
* ``paper_diem``: the same profile and config without the peer methods (EMDiffusion, DiffEM,
  AmbientDiffusion and their experiment cifar10_r60) and with one prior-sample job per iteration
  (``evaluate.shards: 1``), i.e. the job set the suite planned before the peers and the sharded prior
  samples were added (plus the figure jobs);
* ``paper_diem_cold``: the same with ``EMPRIOR_PLAN_CACHE=0``, i.e. as the first dry run of a config
  (and code version) is, before its plan file exists: the config is validated and the plug-ins imported
  (torch with them) while the Snakefile is parsed (:mod:`emprior.config.planning`); the two others
  read the plan file their first repeat wrote;
* ``floor`` / ``floor_diem``: a generated Snakefile with as many trivial jobs as ``paper`` /
  ``paper_diem`` (one rule, a log and a
  benchmark file each, no input functions, params or resources), planned by the same Snakemake with
  the same executor: the part of the time that is Snakemake's per-job cost, not this workflow's.

The job counts are read from Snakemake's own summary so that a changed DAG shows up here too.
Run it on an idle machine: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("emdiffusion", "diffem", "ambient")


def snakemake_exe() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    return str(exe) if exe.exists() else "snakemake"


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + sys of the child) and the planned job count of one dry run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, flags=re.M)
    return wall, cpu, int(match.group(1)) if match else -1


def diem_only(config: dict) -> dict:
    """config/paper.yaml without the peer methods' variants (and cifar10_r60), one prior-sample job each."""
    out = json.loads(json.dumps(config))
    for name in list(out["experiments"]):
        out["experiments"][name]["evaluate"].pop("shards", None)
        variants = out["experiments"][name]["variants"]
        for v in [v for v, spec in variants.items() if spec.get("method") in PEERS]:
            del variants[v]
        if not variants or name == "cifar10_r60":
            del out["experiments"][name]
    tables = out.get("tables", {}).get("table1", {})
    if tables:
        tables["experiments"] = [e for e in tables["experiments"] if e in out["experiments"]]
    return out


def floor_snakefile(n_jobs: int, folder: Path) -> None:
    (folder / "Snakefile").write_text(
        f"rule all:\n    input: [f'out/{{i}}.txt' for i in range({n_jobs - 1})]\n\n"
        "rule job:\n    output: 'out/{i}.txt'\n    log: 'logs/{i}.log'\n"
        "    benchmark: 'bench/{i}.tsv'\n    threads: 1\n"
        "    shell: 'echo {wildcards.i} > {output} 2> {log}'\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "dry_run.json")
    args = parser.parse_args(argv)
    smk = snakemake_exe()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        diem_cfg = tmp / "paper_diem.yaml"
        diem_cfg.write_text(yaml.safe_dump(diem_only(yaml.safe_load((ROOT / "config/paper.yaml").read_text()))))
        diem = [smk, "--profile", "slurm", "--configfiles", str(diem_cfg), "-n", "all"]
        runs = {
            "paper": ([smk, "--profile", "slurm", "-n", "all"], None),
            "paper_diem": (diem, None),
            "paper_diem_cold": (diem, {"EMPRIOR_PLAN_CACHE": "0"}),
        }
        # repeats interleaved, best of each: the machine's speed drifts over minutes
        tries: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (cmd, env) in runs.items():
                tries[name].append(timed(cmd, ROOT, env))
        results: dict[str, dict] = {}
        for name, got in tries.items():
            best = min(got, key=lambda r: r[0])
            results[name] = {"wall_s": round(best[0], 2), "cpu_s": round(best[1], 2), "jobs": best[2],
                             "all_wall_s": [round(r[0], 2) for r in got]}
            print(f"{name:15s} {best[2]:5d} jobs  {best[0]:6.2f} s wall  {best[1]:6.2f} s CPU", flush=True)
        # Snakemake's floor for each job count: both folders are planned before timing, so that the
        # first repeat is not the one that creates .snakemake/
        floors = {"floor": results["paper"]["jobs"], "floor_diem": results["paper_diem"]["jobs"]}
        cmd = [smk, "--executor", "slurm", "--jobs", "100", "-n", "all"]
        for name, n_jobs in floors.items():
            (tmp / name).mkdir()
            floor_snakefile(n_jobs, tmp / name)
        tries = {name: [timed(cmd, tmp / name) for _ in range(args.repeats)] for name in floors}
        for name, got in tries.items():
            best = min(got, key=lambda r: r[0])
            results[name] = {"wall_s": round(best[0], 2), "cpu_s": round(best[1], 2), "jobs": best[2]}
            print(f"{name:15s} {best[2]:5d} jobs  {best[0]:6.2f} s wall  {best[1]:6.2f} s CPU", flush=True)
    for name in ("paper", "paper_diem", "paper_diem_cold", *floors):
        r = results[name]
        r["ms_per_job"] = round(1000 * r["wall_s"] / max(r["jobs"], 1), 2)
    results["paper_over_floor"] = round(results["paper"]["wall_s"] / results["floor"]["wall_s"], 2)
    results["paper_diem_over_floor"] = round(results["paper_diem"]["wall_s"] / results["floor_diem"]["wall_s"], 2)
    results["cold_over_warm"] = round(results["paper_diem_cold"]["wall_s"] / results["paper_diem"]["wall_s"], 2)
    results["cores"] = os.cpu_count()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"paper / floor: {results['paper_over_floor']}x  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
