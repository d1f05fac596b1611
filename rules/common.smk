# Shared helpers for the rules: config validation, per-job config files, paths and input functions.

import functools
import json
import sys
from pathlib import Path

from emprior.config.loading import job_config
from emprior.config.owner import allowed as allow_foreign, check_owner, claim, config_source
from emprior.config.planning import plan_facts
from emprior.config.seeds import BRANCH_SUFFIX, branch_seed, branches, coerce_seeds, seeded, split_branch
from emprior.core.errors import ConfigError
from emprior.core.provenance import config_digest
from emprior.evaluation.selection import evaluated_iterations

# A results folder belongs to the config file that first ran into it (emprior.config.owner): a run of
# another config file stops here, before it writes anything, unless --config allow_foreign_results=true.
# Only the main Snakemake process checks (the jobs' own processes parse this file too).
_BASE = Path(workflow.main_snakefile).parent
SOURCE = config_source(workflow.config_settings.configfiles or [_BASE / "config" / "config.yaml"], _BASE)
ALLOW_FOREIGN = allow_foreign(config)
if workflow.is_main_process:
    try:
        check_owner(config.get("results", "results"), SOURCE, ALLOW_FOREIGN)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")

# The config validated and each variant's EM-method facts, kept per config and code version in
# results/.config/plan-*.json (emprior.config.planning): a later parse imports no plug-in (no torch).
if "seeds" in config:  # --config seeds=[0,1,2] gives strings
    config["seeds"] = coerce_seeds(config["seeds"])
try:
    PLAN = plan_facts(config, source="config")
except ConfigError as exc:
    sys.exit(f"error: {exc}")

R = config["results"]
PY = "python -m emprior"
# conda env for --software-deployment-method conda (paths in rules are relative to rules/)
ENV = "../envs/emprior.yaml"


# experiment: a branch name (emprior.config.seeds): the experiment, or <experiment>/seed_<s> for several seeds
wildcard_constraints:
    experiment="[a-z][a-z0-9_]*" + BRANCH_SUFFIX,
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


def base(experiment):
    """The experiment of a branch name (``digits/seed_1`` -> ``digits``)."""
    return split_branch(experiment)[0]


def experiment_branches(experiment):
    """The branch names of an experiment, one per seed (the experiment itself for one seed)."""
    return [b for b, _ in branches(config, experiment)]


# Each job config is written once and its path reused: the paper DAG asks for it thousands of times
# (params of every shard job), and building it (deep copies, a digest) dominated the dry run.
@functools.lru_cache(maxsize=None)
def _data_config(branch):
    experiment = base(branch)
    exp = config["experiments"][experiment]
    keep = {"seed": branch_seed(config, branch), "results": R, "torch_threads": config.get("torch_threads", 1),
            "experiments": {experiment: {"dataset": exp["dataset"], "observation": exp["observation"]}}}
    keep.update({k: config[k] for k in ("plugins", "device", "precision", "storage", "reproducibility")
                 if k in config})
    return _dump(keep)


@functools.lru_cache(maxsize=None)
def _variant_config(branch, variant, kind):
    # metrics (weight paths) never: the FID weights reach the metrics jobs through fid_reference.h5, so
    # providing them reruns no EM or sampling job
    drop = ("evaluate", "metrics") if kind == "em" else ("metrics",)
    experiment = base(branch)
    cfg = job_config(seeded(config, branch_seed(config, branch)), experiment, variant, drop=drop)
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
    return config["experiments"][base(wc.experiment)]


def n_iterations(experiment):
    return config["experiments"][base(experiment)]["iterations"]


def n_shards(experiment):
    return config["experiments"][base(experiment)]["estep"]["shards"]


def method(experiment, variant):
    """The variant's EM method's facts (emprior.config.planning.MethodFacts): its stages decide which
    jobs exist."""
    return PLAN.method(base(experiment), variant)


def has_stage(experiment, variant, stage):
    return stage in method(experiment, variant).stages


def first_iteration(experiment, variant):
    """0 for a method with an initial prior (iter_000), else 1."""
    return 0 if has_stage(experiment, variant, "init") else 1


def itdir(experiment, variant, k):
    return f"{R}/{experiment}/{variant}/iter_{int(k):03d}"


def variants_of(experiment):
    return list(config["experiments"][base(experiment)]["variants"])


def final_metrics(experiment):
    # a method with a final stage (DiffEM) is scored by its final model (rules/diffem.smk)
    return [f"{R}/{experiment}/{v}/final/metrics.json" if method(experiment, v).final_stage
            else f"{itdir(experiment, v, n_iterations(experiment))}/metrics.json" for v in variants_of(experiment)]


def first_metrics(experiment):
    return [f"{itdir(experiment, v, 1)}/metrics.json" for v in variants_of(experiment)]


def evaluated(experiment, variant):
    """The variant's iterations with prior samples and metrics.json (evaluate.iterations)."""
    return evaluated_iterations(config["experiments"][base(experiment)], first_iteration(experiment, variant))


def n_prior_shards(experiment):
    return config["experiments"][base(experiment)]["evaluate"].get("shards", 1)


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


def all_kept_artifacts(experiment):
    """Every artifact of an experiment that the workflow keeps for audit: the data, each iteration's
    model.pt, posterior.h5 and E-step shards, the evaluated iterations' prior samples (and their shards),
    iteration 1's E-step check and the FID reference."""
    out = [f"{R}/{experiment}/data/clean.h5", f"{R}/{experiment}/data/observations.h5"]
    if fid_on(experiment):
        out.append(f"{R}/{experiment}/data/fid_reference.h5")
    K = n_iterations(experiment)
    for v in variants_of(experiment):
        out += [f"{itdir(experiment, v, k)}/model.pt" for k in range(first_iteration(experiment, v), K + 1)]
        if has_stage(experiment, v, "estep"):
            out += [f"{itdir(experiment, v, k)}/posterior.h5" for k in range(1, K + 1)]
        out += [f"{itdir(experiment, v, k)}/prior_samples.h5" for k in evaluated(experiment, v)]
        if method(experiment, v).estep_check and 1 in evaluated(experiment, v):
            out.append(f"{itdir(experiment, v, 1)}/estep_check.json")
    return out


def all_targets():
    # Every artifact kept for audit is a target, not only the final tables: Snakemake does not rebuild a
    # missing intermediate file whose consumers are up to date, but a deleted file must be recomputed
    # (and, being newer, rerun everything downstream of it) so that the audit trail stays complete;
    # `python -m emprior repair` turns a modified file into a missing one (README, "When a job dies").
    targets = []
    for name in (b for e in config["experiments"] for b in experiment_branches(e)):
        targets += all_kept_artifacts(name)
        targets += all_iteration_metrics(name)
        targets += all_posterior_shards(name)
        targets += all_prior_shards(name)
        targets += all_final_targets(name)
        targets.append(f"{R}/figures/{name}_metrics.png")
    targets += report_targets()
    return list(dict.fromkeys(targets))


onstart:
    # a real run (not a dry run) claims its results folder, and warns once if the plan may not fit
    from emprior.report.disk_check import onstart_warning

    claim(R, SOURCE)
    onstart_warning(R, _global_config())
