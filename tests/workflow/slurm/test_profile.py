"""The SLURM profile (slurm/config.yaml) without a cluster: its structure, its attempt-scaled
resources, the test-profile derivation and the job-audit parsers used by .ci/slurm-test.sh, and one
snakemake dry run of the plumbing workflow that shows what sbatch would be asked for.

The real cluster run is .ci/slurm-test.sh (root + apt; `make slurm-test`)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PROFILE = REPO / "slurm" / "config.yaml"
GPU_RULES = {
    "estep_shard",
    "estep_check",
    "mstep",
    "prior_samples",
    "prior_samples_shard",
    "fig5",
    "iteration_metrics",
    "fid_reference",
    "table4",
    "sampler_accuracy",
    "table5",
    "ffhq_cell",
    "mri_posterior",
}
# Rules that must never receive a GPU (login-node localrules and the CPU-light rules).
NON_GPU_RULES = {
    "dataset",
    "observe",
    "table1",
    "figures",
    "fig3",
    "all",
    "init_prior",
    "gather_posterior",
    "gather_prior_samples",
    "fig2",
    "table4_ffhq",
}

_spec = importlib.util.spec_from_file_location(
    "slurm_test_tools", Path(__file__).with_name("slurm_test_tools.py")
)
tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tools)


@pytest.fixture(scope="module")
def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def test_profile_top_level_settings(profile):
    assert profile["executor"] == "slurm"
    assert profile["jobs"] == 100
    assert profile["configfiles"] == ["config/paper.yaml"]
    assert profile["retries"] == 2
    assert profile["rerun-incomplete"] is True and profile["keep-going"] is True
    assert profile["latency-wait"] >= 30


def test_gpus_go_to_gpu_rules_only(profile):
    set_res = profile["set-resources"]
    assert set(set_res) == GPU_RULES
    # mstep's GPU count is the rule's own resource (the config's mstep.gpus): an entry here would override it
    assert all(res["gpu"] == 1 for rule, res in set_res.items() if rule != "mstep") and "gpu" not in set_res["mstep"]
    assert not any(k in profile["default-resources"] for k in tools.GPU_KEYS)
    assert not NON_GPU_RULES & set(set_res)


def test_profile_leaves_the_sigterm_request_to_the_rules(profile):
    # estep_shard and mstep ask for it themselves (rules/em.smk); an entry here would replace it
    assert all("slurm_extra" not in res for res in profile["set-resources"].values())
    assert "slurm_extra" not in profile["default-resources"]


def test_threads_match_cpus_per_task(profile):
    # sbatch -c comes from cpus_per_task, the command's --threads from set-threads: they must agree. The
    # M-step asks for --cpus-per-gpu instead (its job's CPUs grow with mstep.gpus: one process per GPU,
    # each with --threads), so default-resources' cpus_per_task is unset for it (null).
    set_res = profile["set-resources"]
    assert set_res["mstep"]["cpus_per_gpu"] == 8 and set_res["mstep"]["cpus_per_task"] is None
    per_process = {r: res["cpus_per_task"] if r != "mstep" else res["cpus_per_gpu"] for r, res in set_res.items()}
    assert profile["set-threads"] == per_process


@pytest.mark.parametrize("key,base", [("mem_mb", 32000), ("runtime", 240)])
def test_estep_resources_grow_linearly_with_attempt(profile, key, base):
    expr = profile["set-resources"]["estep_shard"][key]
    assert [tools.eval_resource(expr, a) for a in (1, 2, 3)] == [base, 2 * base, 3 * base]


def test_every_mem_and_runtime_grows_per_attempt(profile):
    blocks = [profile["default-resources"], *profile["set-resources"].values()]
    for block in blocks:
        for key in ("mem_mb", "runtime"):
            vals = [tools.eval_resource(block[key], a) for a in (1, 2, 3)]
            assert vals[0] > 0 and vals[0] < vals[1] < vals[2], (key, block[key], vals)


def test_derived_test_profile_fits_the_node(tmp_path):
    meta = tools.make_profile(PROFILE, tmp_path, node_mem_mb=8000, partition="debug", logdir="/tmp/x")
    derived = yaml.safe_load((tmp_path / "config.yaml").read_text())
    # Peak request: mstep 64000 MB at attempt 3 -> scaled to half the node.
    assert meta["last_attempt"] == 3
    assert meta["scale"] == pytest.approx(4000 / 192000)
    mstep = derived["set-resources"]["mstep"]
    assert tools.eval_resource(mstep["mem_mb"], 3) == 4000
    assert tools.eval_resource(mstep["mem_mb"], 1) == int(64000 * 4000 / 192000)
    assert "gpu" not in mstep and mstep["cpus_per_gpu"] == 1 and derived["set-threads"]["mstep"] == 1
    assert mstep["cpus_per_task"] is None and derived["set-resources"]["estep_shard"]["cpus_per_task"] == 1
    assert tools.eval_resource(mstep["runtime"], 2) == 1440  # runtimes are kept
    assert derived["default-resources"]["slurm_partition"] == "debug"
    assert derived["slurm-status-command"] == "squeue" and "configfiles" not in derived
    assert json.loads((tmp_path / "meta.json").read_text()) == meta


def test_gpu_rules_are_read_from_the_plan_too():
    plan = ("rule mstep:\n    input: a\n    resources: mem_mb=1, gpu=4\n\nrule gather_posterior:\n"
            "    resources: mem_mb=1\n\nlocalrule table1:\n    resources: tmpdir=/tmp\n")
    assert tools.plan_gpu_rules(plan) == {"mstep"}


def test_scontrol_parsers():
    line = (
        "JobId=5 JobName=abc Comment=rule_estep_shard_wildcards_shard=1 JobState=COMPLETED ExitCode=0:0 "
        "TimeLimit=1-02:03:00 MinMemoryNode=2G TRES=cpu=1,mem=2G,node=1,billing=1 TresPerJob=gres:gpu:1"
    )
    (job,) = tools.parse_scontrol("garbage\n" + line)
    assert job["Comment"] == "rule_estep_shard_wildcards_shard=1"
    assert tools.time_to_min(job["TimeLimit"]) == 1440 + 123
    assert tools.time_to_min("00:30:00") == 30 and tools.time_to_min("5:00") == 5
    assert tools.mem_to_mb(job["MinMemoryNode"]) == 2048 and tools.mem_to_mb("451M") == 451
    assert tools.job_gpus(job) == 1
    assert tools.job_gpus({"TresPerJob": "gres:gpu:a100:2"}) == 2
    assert tools.job_gpus({"TresPerNode": "gres:gpu:1"}) == 1
    assert tools.job_gpus({"TRES": "cpu=1,mem=10M,node=1"}) == 0


def planned_jobs(text: str) -> dict[str, tuple[str, str]]:
    """output -> (resources line, shell command) of every job in a ``snakemake -n`` log."""
    jobs = re.findall(r"^rule \w+:\n(?:    .*\n)*?    output: (\S+)\n(?:    .*\n)*?    resources: ([^\n]+)\n"
                      r"Shell command: ([^\n]+)", text, flags=re.MULTILINE)
    return {out: (res, shell) for out, res, shell in jobs}


@pytest.mark.slow
def test_dry_run_of_a_two_gpu_mstep(tmp_path):
    """`mstep.gpus: 2` (tiny config + overlay) through `--profile slurm`: the M-step asks for 2 GPUs and
    8 CPUs per GPU and runs torchrun with 2 processes; an experiment without it keeps one GPU and python."""
    overlay = tmp_path / "gpus2.yaml"
    overlay.write_text("device: cpu\nexperiments:\n  digits:\n    mstep: {gpus: 2}\n")
    two, one = (f"results-tiny/{e}/diem_tweedie/iter_001/model.pt" for e in ("digits", "manifold"))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "--configfiles", str(REPO / "config" / "tiny.yaml"),
         str(overlay), "-d", str(tmp_path), "-n", two, one],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    jobs = planned_jobs(out.stdout)
    (res2, shell2), (res1, shell1) = jobs[two], jobs[one]
    assert "gpu=2" in res2 and "cpus_per_gpu=8" in res2 and "cpus_per_task" not in res2, res2
    assert shell2.startswith("torchrun --standalone --nproc-per-node 2 -m emprior mstep "), shell2
    assert "gpu=1" in res1 and "cpus_per_gpu=8" in res1 and "cpus_per_task" not in res1, res1
    assert shell1.startswith("python -m emprior mstep "), shell1
    # SIGTERM 5 min before the time limit for the resumable rules only; not B: (that signals the batch
    # shell only, while emprior runs inside the srun job step; see the profile's comment)
    signal = "slurm_extra=--signal=TERM@300"
    assert signal in res2 and signal in res1
    # the other GPU rules keep their cpus_per_task
    shards = [v for k, v in jobs.items() if "/posterior/shard_" in k]
    assert shards and all("gpu=1" in r and "cpus_per_task=8" in r and signal in r for r, _ in shards)
    others = [r for k, (r, _) in jobs.items() if not k.endswith("model.pt") and "/posterior/shard_" not in k]
    others += [jobs[k][0] for k in jobs if k.endswith("iter_000/model.pt")]  # init_prior
    assert others and not any("slurm_extra" in r for r in others)


@pytest.mark.slow
def test_dry_run_shows_sbatch_resources(tmp_path):
    """`snakemake --profile slurm -n` on the plumbing workflow (no SLURM binaries needed)."""
    plumbing = Path(__file__).with_name("plumbing")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "slurm",
            "--workflow-profile",
            "none",
            "-s",
            str(plumbing / "Snakefile"),
            "--configfiles",
            str(plumbing / "config.yaml"),
            "-d",
            str(tmp_path),
            "-n",
            "all",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    res = dict(re.findall(r"^rule (\w+):.*?resources: ([^\n]+)", out.stdout, flags=re.MULTILINE | re.DOTALL))
    estep, init = res["estep_shard"], res["init_prior"]
    assert (
        "gpu=1" in estep and "mem_mb=32000" in estep and "runtime=240" in estep and "cpus_per_task=8" in estep
    )
    assert "gpu" not in init and "mem_mb=8000" in init and "runtime=60" in init and "cpus_per_task=2" in init
    assert "Job stats" in out.stdout and re.search(r"estep_shard\s+2\n", out.stdout)
