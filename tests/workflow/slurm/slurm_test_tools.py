"""Helpers for `.ci/slurm-test.sh` (the local single-node SLURM integration test).

Two sub-commands, stdlib + PyYAML only (``check --mode ddp`` also reads the M-step's model.pt with torch):

``make-profile``  Derive a test profile from the real one (`slurm/config.yaml`). The structure is kept
    (which rules get GPUs, the `attempt`-scaled expressions, retries); only what a 2-core CI machine
    cannot grant is shrunk: every ``mem_mb`` expression E becomes ``max(1, int((E) * s))`` with one
    scale s chosen so the largest request at the last attempt fits half the node, ``cpus_per_task``
    (where set), ``cpus_per_gpu`` and ``set-threads`` become 1, site keys (partition, account, qos,
    constraint, gpu_model) are dropped, and local-cluster settings are added (partition, squeue status,
    short polling, kept logs).

``check``  Compare what SLURM actually ran (``scontrol -o show job`` dump; the test cluster keeps
    finished jobs for an hour via MinJobAge) against the dry-run plan and the derived profile, and print
    one ``PASS name`` / ``FAIL name: detail`` line per check for the shell script to count.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

GPU_KEYS = ("gpu", "gpu_model", "gpus")


def eval_resource(expr: Any, attempt: int) -> Any:
    """Evaluate a profile resource value (int or Python expression of `attempt`), as snakemake does."""
    if isinstance(expr, (int, float)):
        return expr
    try:
        return eval(str(expr), {"__builtins__": {}}, {"attempt": attempt, "min": min, "max": max, "int": int})
    except (NameError, SyntaxError):
        return str(expr)  # plain strings such as a partition name


def make_profile(src: Path, dst_dir: Path, node_mem_mb: int, partition: str, logdir: str) -> dict:
    """Write the derived profile to ``dst_dir/config.yaml`` and its metadata to ``dst_dir/meta.json``."""
    prof = yaml.safe_load(src.read_text())
    if not isinstance(prof, dict):
        raise SystemExit(f"make-profile: {src} is not a YAML mapping")
    last_attempt = int(prof.get("retries", 0)) + 1
    blocks = [prof.setdefault("default-resources", {})] + list(prof.get("set-resources", {}).values())
    peak = max(
        (float(eval_resource(b["mem_mb"], last_attempt)) for b in blocks if "mem_mb" in b), default=1.0
    )
    scale = min(1.0, (node_mem_mb // 2) / peak)
    for b in blocks:
        if "mem_mb" in b:
            b["mem_mb"] = f"max(1, int(({b['mem_mb']}) * {scale!r}))"
        for cpus in ("cpus_per_task", "cpus_per_gpu"):
            if b.get(cpus) is not None:  # None (null) unsets default-resources' value: kept
                b[cpus] = 1
        for site_key in ("slurm_partition", "slurm_account", "qos", "constraint", "gpu_model"):
            b.pop(site_key, None)  # a real site's values mean nothing on the test cluster
    # Commands' --threads follow the 1 CPU each job now gets.
    prof["set-threads"] = {rule: 1 for rule in prof.get("set-threads", {})}
    prof["default-resources"]["slurm_partition"] = partition
    prof.pop("configfiles", None)  # the test passes its tiny config on the command line
    prof.update(
        {
            "slurm-status-command": "squeue",  # no accounting daemon, so no sacct
            "slurm-no-account": True,
            "slurm-init-seconds-before-status-checks": 1,
            "seconds-between-status-checks": 2,
            "slurm-keep-successful-logs": True,
            "slurm-logdir": logdir,
            "latency-wait": 5,
        }
    )
    dst_dir.mkdir(parents=True, exist_ok=True)
    (dst_dir / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    meta = {"scale": scale, "last_attempt": last_attempt, "node_mem_mb": node_mem_mb}
    (dst_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def parse_plan(text: str) -> Counter:
    """Jobs per rule from a ``snakemake -n`` log (a dry run prints every job as ``rule NAME:``)."""
    return Counter(m.group(1) for m in re.finditer(r"^(?:local)?rule (\w+):\s*$", text, flags=re.MULTILINE))


def plan_gpu_rules(text: str) -> set[str]:
    """Rules whose planned jobs ask for a GPU in a ``snakemake -n`` log (``resources: ..., gpu=N``): the
    profile's set-resources and the rules' own GPU resources (mstep: the config's mstep.gpus)."""
    rules, rule = set(), None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            g = re.search(r"\bgpus?=(\d+)", line)
            if g and int(g.group(1)) > 0:
                rules.add(rule)
    return rules


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """``scontrol -o show job`` (one job per line, space-separated key=value) -> list of dicts."""
    jobs = []
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        rec = {}
        for tok in line.split(" "):
            if "=" in tok:
                key, val = tok.split("=", 1)
                rec.setdefault(key, val)
        jobs.append(rec)
    return jobs


def mem_to_mb(val: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", val)
    if not m:
        raise ValueError(f"unparseable memory {val!r}")
    return float(m.group(1)) * {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024**2}[m.group(2)]


def time_to_min(val: str) -> float:
    days, _, hms = val.rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 1440 + parts[0] * 60 + parts[1] + parts[2] / 60


def job_gpus(job: dict[str, str]) -> int:
    """GPUs requested by a job: ``--gpus=[model:]N`` shows as TresPerJob=gres:gpu[:model]:N,
    ``--gres=gpu:N`` as TresPerNode=gres:gpu:N (slurm 22.05 ``scontrol -o show job``)."""
    for key in ("TresPerJob", "TresPerNode", "TRES"):
        m = re.search(r"gres[:/]gpu(?::[\w.-]+)?[:=](\d+)", job.get(key, ""))
        if m:
            return int(m.group(1))
    return 0


def check(args: argparse.Namespace) -> int:
    results: list[tuple[bool, str, str]] = []

    def record(ok: bool, name: str, detail: str = "") -> None:
        results.append((bool(ok), name, detail))

    prof = yaml.safe_load((args.profile_dir / "config.yaml").read_text())
    meta = json.loads((args.profile_dir / "meta.json").read_text())
    set_res: dict[str, dict] = prof.get("set-resources", {})
    gpu_rules = {r for r, res in set_res.items() if any(k in res for k in GPU_KEYS)}
    gpu_rules |= plan_gpu_rules(args.plan.read_text())
    planned = parse_plan(args.plan.read_text())
    local = {r for r in args.expect_local.split(",") if r}
    run_log = args.run_log.read_text()
    jobs = parse_scontrol(args.jobs.read_text())
    for j in jobs:
        m = re.match(r"rule_(\w+?)(?:_wildcards_(.*))?$", j.get("Comment", ""))
        j["rule"] = m.group(1) if m else "?"
        j["wc"] = (m.group(2) or "") if m else ""

    remote_planned = {r: n for r, n in planned.items() if r not in local}
    record(sum(remote_planned.values()) > 0, "plan has cluster jobs", f"plan={dict(planned)}")
    record(len(jobs) > 0, "sbatch jobs recorded by slurmctld", f"{len(jobs)} jobs")
    record(
        all(j["rule"] != "?" for j in jobs),
        "every SLURM job carries a rule comment",
        str([j.get("Comment") for j in jobs if j["rule"] == "?"]),
    )
    done = Counter(j["rule"] for j in jobs if j.get("JobState") == "COMPLETED")
    record(
        done == Counter(remote_planned),
        "completed SLURM jobs per rule == planned non-local jobs",
        f"completed={dict(done)} planned={remote_planned}",
    )
    submitted_local = sorted({j["rule"] for j in jobs} & local)
    record(not submitted_local, "localrules never go through sbatch", f"submitted: {submitted_local}")
    ran_local = {m.group(1) for m in re.finditer(r"^localrule (\w+):\s*$", run_log, flags=re.MULTILINE)}
    missing_local = sorted((set(planned) & local) - ran_local)
    record(
        not missing_local,
        f"localrules ran on the submit host: {sorted(set(planned) & local)}",
        f"not seen as localrule: {missing_local}",
    )
    leftover = [j["JobId"] for j in jobs if j.get("JobState") not in ("COMPLETED", "FAILED")]
    record(not leftover, "no job left pending/running/cancelled", str(leftover))

    bad_gpu = [
        (j["JobId"], j["rule"], j.get("TresPerJob", ""))
        for j in jobs
        if (job_gpus(j) > 0) != (j["rule"] in gpu_rules)
    ]
    ran_gpu = sorted({j["rule"] for j in jobs} & gpu_rules)
    record(not bad_gpu, f"GPU allocated exactly to GPU rules (ran: {ran_gpu})", str(bad_gpu))
    record(bool(ran_gpu) or args.mode == "real", "at least one GPU rule ran under SLURM", "")

    # Attempt of a job = rank among jobs with the same rule + wildcards (job ids increase).
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for j in sorted(jobs, key=lambda j: int(j["JobId"])):
        by_key[(j["rule"], j["wc"])].append(j)
    mismatches = []
    checked = 0
    for (rule, _), js in by_key.items():
        if rule not in set_res:
            continue  # the rule's own resources may win over default-resources
        for attempt, j in enumerate(js, start=1):
            res = set_res[rule]
            want_mem = eval_resource(res["mem_mb"], attempt) if "mem_mb" in res else None
            want_min = eval_resource(res["runtime"], attempt) if "runtime" in res else None
            got_mem = mem_to_mb(j.get("MinMemoryNode", "0"))
            got_min = time_to_min(j.get("TimeLimit", "0"))
            checked += 1
            if (want_mem is not None and abs(got_mem - want_mem) > 1) or (
                want_min is not None and abs(got_min - want_min) > 0.5
            ):
                mismatches.append((j["JobId"], rule, attempt, got_mem, want_mem, got_min, want_min))
    record(
        checked > 0 and not mismatches,
        f"sbatch mem/time follow the profile's attempt expressions ({checked} jobs)",
        str(mismatches),
    )

    failed = [j for j in jobs if j.get("JobState") == "FAILED"]
    retried_ok = all(
        any(k.get("JobState") == "COMPLETED" for k in by_key[(j["rule"], j["wc"])]) for j in failed
    )
    record(retried_ok, "every failed attempt was retried to completion", str([j["JobId"] for j in failed]))

    logs = list(Path(args.logdir).rglob("*.log")) if Path(args.logdir).is_dir() else []
    record(len(logs) == len(jobs) > 0, "one SLURM log per job kept", f"{len(logs)} logs for {len(jobs)} jobs")

    if args.mode == "plumbing":
        _check_plumbing(args, jobs, by_key, meta, record)
    if args.mode == "ddp":
        _check_ddp(args, jobs, set_res, record)

    for ok, name, detail in results:
        short = f" ({detail})" if detail and len(detail) < 160 else ""
        print(f"PASS {name}{short}" if ok else f"FAIL {name}: {detail}")
    return 0


def _check_plumbing(args, jobs, by_key, meta, record) -> None:
    """Checks that need the throwaway workflow's per-job JSON records."""
    out = args.workdir / "out"
    shards = sorted(out.glob("estep_shard_*.json"))
    record(len(shards) == 2, "plumbing outputs exist", str(shards))
    recs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    ids = {j["JobId"] for j in jobs}
    venv_python = str(args.venv / "bin" / "python")
    record(
        recs.get("dataset", {}).get("slurm_job_id") is None,
        "localrule ran on the submit host",
        str(recs.get("dataset")),
    )
    remote = {k: v for k, v in recs.items() if k != "dataset"}
    record(
        len(remote) == 3 and all(v["slurm_job_id"] in ids for v in remote.values()),
        "cluster rules ran inside SLURM jobs",
        str({k: v["slurm_job_id"] for k, v in remote.items()}),
    )
    record(
        all(v["python"] == venv_python for v in recs.values()),
        "jobs ran the project's venv python",
        str({k: v["python"] for k, v in recs.items()}),
    )
    gpus = {k: v["gpus_on_node"] for k, v in remote.items()}
    record(
        gpus.get("estep_shard_0") == "1"
        and gpus.get("estep_shard_1") == "1"
        and gpus.get("init_prior") in (None, "0"),
        "SLURM_GPUS_ON_NODE: 1 in estep_shard, none in init_prior",
        str(gpus),
    )
    attempts = {k: v["attempt"] for k, v in remote.items()}
    record(
        attempts == {"init_prior": 1, "estep_shard_0": 2, "estep_shard_1": 2},
        "estep_shard succeeded on attempt 2 after a planned failure",
        str(attempts),
    )
    e0 = [j for (rule, _), js in by_key.items() if rule == "estep_shard" for j in js]
    states = sorted((j["JobState"], j.get("ExitCode") == "0:0") for j in e0)
    record(
        states == [("COMPLETED", True)] * 2 + [("FAILED", False)] * 2,
        "estep_shard: 2 FAILED (nonzero exit) + 2 COMPLETED SLURM jobs",
        str(states),
    )
    # The failed attempts' SLURM logs are kept and hold the rule's own stderr.
    logs = {p.stem: p.read_text(errors="replace") for p in Path(args.logdir).rglob("*.log")}
    failed_ids = [j["JobId"] for j in e0 if j["JobState"] == "FAILED"]
    record(
        failed_ids and all("planned failure on attempt 1" in logs.get(i, "") for i in failed_ids),
        "failed attempts' SLURM logs hold the rule's stderr",
        str(failed_ids),
    )
    # Growth across attempts as seen by SLURM, and the value snakemake handed the job on the retry.
    grew = []
    for (rule, wc), js in by_key.items():
        if rule == "estep_shard" and len(js) == 2:
            m1, m2 = (mem_to_mb(j["MinMemoryNode"]) for j in js)
            t1, t2 = (time_to_min(j["TimeLimit"]) for j in js)
            rec = recs.get(f"estep_shard_{wc.split('=')[-1]}", {})
            grew.append((wc, m1, m2, t1, t2, rec.get("mem_mb"), rec.get("runtime")))
    record(
        len(grew) == 2
        and all(m2 > m1 and t2 > t1 and rm == m2 and rt == t2 for _, m1, m2, t1, t2, rm, rt in grew),
        "retry was resubmitted with larger mem and time (attempt expressions)",
        str(grew),
    )


# 2 ranks vs 1 after the tiny digits M-step (20 Adam steps, EMA, hflip): max |diff| 8.7e-6 measured on
# 2 cores (tests/unit/training/test_ddp.py: < 1e-5 after 8 steps); float reduction order only
DDP_TOL = 1e-4


def _check_ddp(args, jobs, set_res, record) -> None:
    """The 2-process M-step: one SLURM job holding 2 GPUs and 2 x cpus_per_gpu CPUs, torchrun with 2 ranks
    in it, and a model.pt written once (by rank 0) that matches the 1-GPU one of the real phase."""
    import subprocess

    from emprior.core.artifacts import load_torch, verify

    per_gpu = eval_resource(set_res.get("mstep", {}).get("cpus_per_gpu", 0), 1)
    record(
        len(jobs) == 1 and jobs[0]["rule"] == "mstep" and jobs[0].get("JobState") == "COMPLETED",
        "the 2-rank M-step is ONE completed SLURM job",
        str([(j["JobId"], j["rule"], j.get("JobState")) for j in jobs]),
    )
    for j in jobs[:1]:
        got = (job_gpus(j), j.get("CpusPerTres"), j.get("NumNodes"), j.get("NumCPUs"), j.get("NumTasks"))
        record(
            got == (2, f"gres:gpu:{per_gpu}", "1", str(2 * per_gpu), "1"),
            f"its allocation: 2 GPUs x cpus_per_gpu={per_gpu} = {2 * per_gpu} CPUs on 1 node, 1 task (torchrun "
            f"forks the 2 ranks): {j.get('TRES')}",
            f"(gpus, CpusPerTres, nodes, cpus, tasks)={got} TresPerJob={j.get('TresPerJob')}",
        )
    slurm_logs = " ".join(p.read_text(errors="replace") for p in Path(args.logdir).rglob("*.log"))
    record(
        "torchrun --standalone --nproc-per-node 2 -m emprior mstep" in slurm_logs,
        "the job's shell command is torchrun with 2 processes",
        "",
    )
    log_path = args.workdir / "results-tiny/logs/digits/diem_tweedie/iter_001/mstep.log"
    mlog = log_path.read_text(errors="replace") if log_path.exists() else ""
    ranks = sorted(set(re.findall(r"rank (\d) of (\d) on cpu", mlog)))
    record(ranks == [("0", "2"), ("1", "2")], "mstep.log: ranks 0 and 1 of 2 trained on the CPU",
           f"{ranks} in {log_path}")
    side = {}
    try:
        side = verify(args.target, rule="mstep")
        got, ref = load_torch(args.target), load_torch(args.reference)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        record(False, "model.pt loads and matches its checksum sidecar", str(exc))
        return
    record(True, "model.pt loads and matches its checksum sidecar", "")
    leftovers = sorted(p.name for p in Path(args.target).parent.iterdir() if ".resume" in p.name or ".tmp" in p.name)
    record(
        side.get("runtime", {}).get("processes") == 2 and not leftovers,
        "model.pt written by rank 0 of a 2-process job (sidecar processes=2), no resume/tmp file left",
        f"runtime={side.get('runtime')} leftovers={leftovers}",
    )
    diff = max(
        (got[part][k].double() - v.double()).abs().max().item()
        for part in ("weights", "raw_weights")
        for k, v in ref[part].items()
    )
    same_keys = all(got[part].keys() == ref[part].keys() for part in ("weights", "raw_weights"))
    loss_ok = len(got["train"]["loss"]) == len(ref["train"]["loss"]) > 0 and all(
        abs(a - b) <= 1e-5 * abs(b) for a, b in zip(got["train"]["loss"], ref["train"]["loss"])
    )
    record(
        same_keys and diff < DDP_TOL and loss_ok,
        f"2-rank model.pt == the real phase's 1-GPU one: max |diff| {diff:.2g} < {DDP_TOL:g}, losses to 1e-5",
        f"same_keys={same_keys} diff={diff} loss_ok={loss_ok}",
    )
    head = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    want = head.stdout.strip() if head.returncode == 0 else "unknown"
    commit = side.get("provenance", {}).get("git_commit", "?").removesuffix("-dirty")
    record(commit == want, f"the job imported emprior from {args.repo} (provenance git_commit {commit[:12]} == HEAD)",
           f"provenance {commit}, HEAD of {args.repo} {want}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mp = sub.add_parser("make-profile")
    mp.add_argument("--src", type=Path, required=True)
    mp.add_argument("--dst", type=Path, required=True)
    mp.add_argument("--node-mem-mb", type=int, required=True)
    mp.add_argument("--partition", default="debug")
    mp.add_argument("--logdir", required=True)
    ck = sub.add_parser("check")
    ck.add_argument("--profile-dir", type=Path, required=True)
    ck.add_argument("--plan", type=Path, required=True, help="snakemake --dry-run log")
    ck.add_argument("--run-log", type=Path, required=True, help="log of the real snakemake run")
    ck.add_argument("--expect-local", default="", help="comma-separated rules that must run locally")
    ck.add_argument("--jobs", type=Path, required=True)
    ck.add_argument("--logdir", type=Path, required=True)
    ck.add_argument("--workdir", type=Path, required=True)
    ck.add_argument("--venv", type=Path, required=True)
    ck.add_argument("--mode", choices=["plumbing", "real", "ddp"], required=True)
    ck.add_argument("--target", type=Path, help="ddp: the 2-rank M-step's model.pt")
    ck.add_argument("--reference", type=Path, help="ddp: the real phase's 1-GPU model.pt")
    ck.add_argument("--repo", type=Path, help="ddp: the repository whose emprior the jobs must import")
    args = ap.parse_args(argv)
    if args.cmd == "make-profile":
        meta = make_profile(args.src, args.dst, args.node_mem_mb, args.partition, args.logdir)
        print(json.dumps(meta))
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
