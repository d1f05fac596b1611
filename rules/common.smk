# Shared helpers for the rules: config validation, per-job config files, paths and input functions.

import functools
import json
import sys
from pathlib import Path

from emprior.config.loading import job_config
from emprior.config.planning import plan_facts
from emprior.core.errors import ConfigError
from emprior.core.provenance import config_digest
from emprior.evaluation.selection import evaluated_iterations

# The config validated and each variant's EM-method facts, kept per config and code version in
# results/.config/plan-*.json (emprior.config.planning): a later parse imports no plug-in (no torch).
try:
    PLAN = plan_facts(config, source="config")
except ConfigError as exc:
    sys.exit(f"error: {exc}")

R = config["results"]
PY = "python -m emprior"
# conda env for --software-deployment-method conda (paths in rules are relative to rules/)
ENV = "../envs/emprior.yaml"


wildcard_constraints:
    experiment="[a-z][a-z0-9_]*",
    variant="[a-z][a-z0-9_]*",
    k="[0-9]{3}",
    shard="[0-9]+",


def _dump(cfg):
    """Write a job's config subset to R/.config/<digest>.json (content-addressed, written once)."""
    path = Path(R) / ".config" / f"{config_digest(cfg)[:16]}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{__import__('os').getpid()}.tmp")
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        tmp.replace(path)
    return str(path)


def cfg_data(wc):
    """Config of the data rules: only the dataset and observation sections matter."""
    return _data_config(wc.experiment)


def cfg_em(wc):
    """Config of the EM rules of one variant (evaluation settings and metric weight paths excluded)."""
    return _variant_config(wc.experiment, wc.variant, "em")


def cfg_eval(wc):
    return _variant_config(wc.experiment, wc.variant, "eval")


def cfg_global(wc=None):
    return _global_config()


# Each job config is written once and its path reused: the paper DAG asks for it thousands of times
# (params of every shard job), and building it (deep copies, a digest) dominated the dry run.
@functools.lru_cache(maxsize=None)
def _data_config(experiment):
    exp = config["experiments"][experiment]
    keep = {"seed": config["seed"], "results": R, "torch_threads": config.get("torch_threads", 1),
            "experiments": {experiment: {"dataset": exp["dataset"], "observation": exp["observation"]}}}
    keep.update({k: config[k] for k in ("plugins", "device", "precision", "storage") if k in config})
    return _dump(keep)


@functools.lru_cache(maxsize=None)
def _variant_config(experiment, variant, kind):
    # metrics (weight paths) never: the FID weights reach the metrics jobs through fid_reference.h5, so
    # providing them reruns no EM or sampling job
    drop = ("evaluate", "metrics") if kind == "em" else ("metrics",)
    cfg = job_config(config, experiment, variant, drop=drop)
    if kind == "eval":
        # evaluate.iterations and evaluate.fid only pick which jobs (and inputs) exist: editing them must
        # not rerun the others
        cfg["experiments"][experiment]["evaluate"].pop("iterations", None)
        cfg["experiments"][experiment]["evaluate"].pop("fid", None)
    return _dump(cfg)


@functools.lru_cache(maxsize=None)
def _global_config():
    return _dump(job_config(config))


def exp_cfg(wc):
    return config["experiments"][wc.experiment]


def n_iterations(experiment):
    return config["experiments"][experiment]["iterations"]


def n_shards(experiment):
    return config["experiments"][experiment]["estep"]["shards"]


def method(experiment, variant):
    """The variant's EM method's facts (emprior.config.planning.MethodFacts): its stages decide which
    jobs exist."""
    return PLAN.method(experiment, variant)


def has_stage(experiment, variant, stage):
    return stage in method(experiment, variant).stages


def first_iteration(experiment, variant):
    """0 for a method with an initial prior (iter_000), else 1."""
    return 0 if has_stage(experiment, variant, "init") else 1


def itdir(experiment, variant, k):
    return f"{R}/{experiment}/{variant}/iter_{int(k):03d}"


def variants_of(experiment):
    return list(config["experiments"][experiment]["variants"])


def final_metrics(experiment):
    # a method with a final stage (DiffEM) is scored by its final model (rules/diffem.smk)
    return [f"{R}/{experiment}/{v}/final/metrics.json" if method(experiment, v).final_stage
            else f"{itdir(experiment, v, n_iterations(experiment))}/metrics.json" for v in variants_of(experiment)]


def first_metrics(experiment):
    return [f"{itdir(experiment, v, 1)}/metrics.json" for v in variants_of(experiment)]


def evaluated(experiment, variant):
    """The variant's iterations with prior samples and metrics.json (evaluate.iterations)."""
    return evaluated_iterations(config["experiments"][experiment], first_iteration(experiment, variant))


def n_prior_shards(experiment):
    return config["experiments"][experiment]["evaluate"].get("shards", 1)


def all_iteration_metrics(experiment):
    return [f"{itdir(experiment, v, k)}/metrics.json" for v in variants_of(experiment)
            for k in evaluated(experiment, v)]


def all_prior_shards(experiment):
    if n_prior_shards(experiment) == 1:
        return []
    return [f"{itdir(experiment, v, k)}/prior_samples/shard_{j}.h5" for v in variants_of(experiment)
            for k in evaluated(experiment, v) for j in range(n_prior_shards(experiment))]


def all_posterior_shards(experiment):
    return [f"{itdir(experiment, v, k)}/posterior/shard_{j}.h5" for v in variants_of(experiment)
            if has_stage(experiment, v, "estep")
            for k in range(1, n_iterations(experiment) + 1) for j in range(n_shards(experiment))]


def all_targets():
    # The shards are targets too: Snakemake does not rebuild a missing intermediate file whose
    # consumers are up to date, but a deleted shard must be recomputed (and, being newer, rerun
    # everything downstream of it) so that the audit trail stays complete.
    targets = []
    for name in config["experiments"]:
        targets += all_iteration_metrics(name)
        targets += all_posterior_shards(name)
        targets += all_prior_shards(name)
        targets += all_final_targets(name)
        targets.append(f"{R}/figures/{name}_metrics.png")
    targets += report_targets()
    return targets
