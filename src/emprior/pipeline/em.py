"""Rules of the EM recursion (Algorithm 1): ``init_prior`` -> iter_000/model.pt, then per iteration
``estep_shard`` (scattered) -> ``gather_posterior`` -> ``mstep``. What each stage computes is the
variant's EM method's (:mod:`emprior.methods`); these functions read inputs and write artifacts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from emprior.core.artifacts import load_h5, save_h5, save_torch, verify
from emprior.core.errors import ArtifactError
from emprior.core.job import Job
from emprior.core.log import get_logger
from emprior.pipeline.commands import command
from emprior.pipeline.inputs import check_input, check_iteration, check_shard

MODEL_RULES = ("init_prior", "mstep", "final_model")

log = get_logger("emprior.pipeline.em")


def method_of(job: Job):
    from emprior.methods import make_method

    return make_method(job.var, job.exp, where=f"experiments.{job.experiment}.variants.{job.variant}")


@command("init-prior", ids=("experiment", "variant"))
def init_prior(job: Job, observations: str, out: str, clean: str | None = None) -> None:
    """rule init_prior: the method's initial prior q_0 -> iter_000/model.pt"""
    from emprior.data.observations import load_clean, load_observations

    job.iteration = 0
    check_input(job, observations, "--observations", ("observe",), same_variant=False)
    check_input(job, clean, "--clean", ("dataset",), same_variant=False)
    method = method_of(job)
    if method.init_needs_clean and not clean:
        raise ArtifactError(f"{out}: the initial prior of {job.var['method']!r} needs --clean (clean.h5)")
    x_clean = load_clean(clean) if clean and method.init_needs_clean else None
    ckpt, runtime = method.init_prior(job, load_observations(observations), x_clean)
    save_torch(out, ckpt, job.provenance("init_prior"), runtime=runtime)


@command("estep", ids=("experiment", "variant", "iteration"))
def estep(job: Job, shard: int, model: str, observations: str, out: str) -> None:
    """rule estep_shard: posterior samples of one shard -> shard_j.h5 (finished blocks kept in
    shard_j.h5.blocks/ until the shard is written; SIGTERM stops after the current block)"""
    from emprior.data.observations import load_observations
    from emprior.methods.estep import run_estep, shard_blocks
    from emprior.priors.checkpoint import load_prior

    check_iteration(job, 1, extra=1)  # K + 1: a final stage's E-step (DiffEM)
    check_shard(job, shard, job.exp["estep"]["shards"])
    check_input(job, model, "--model", MODEL_RULES, iteration=job.iteration - 1)
    check_input(job, observations, "--observations", ("observe",), same_variant=False)
    obs = load_observations(observations)
    prior = load_prior(model, device=job.device, precision=job.precision)
    if tuple(prior.x_shape) != tuple(obs.x_shape):
        raise ArtifactError(f"{model}: prior of shape {prior.x_shape} does not match observations {obs.x_shape}")
    method = method_of(job)
    subset = method.estep_subset(job, len(obs))
    est = job.exp["estep"]
    repeats = int(est.get("samples_per_observation", 1))
    if repeats > 1:  # the observation list S times over (the official fastMRI 'duplicate'): S independent draws
        subset = np.tile(np.arange(len(obs)) if subset is None else np.asarray(subset), repeats)
    if subset is not None:  # the shards split the subset's blocks; posterior.h5 keeps the original indices
        obs = obs.subset(np.asarray(subset))
    blocks = shard_blocks(len(obs), est["block_size"], est["shards"], shard)
    # finished blocks go to shard_j.h5.blocks/ (kept when the job dies or is preempted; a rerun reuses
    # those made from the same model, observations and config, whatever the number of shards)
    partial = str(out) + ".blocks"
    exp_cfg = {**job.exp, "estep": {k: v for k, v in est.items() if k != "shards"}}
    key = {"model_sha256": verify(model)["sha256"], "observations_sha256": verify(observations)["sha256"],
           "config_sha256": hashlib.sha256(json.dumps({"experiment": exp_cfg, "variant": job.var}, sort_keys=True,
                                                      default=str).encode()).hexdigest()}
    res = run_estep(prior, method, obs, job, blocks, shard=shard, partial=partial, key=key)
    if subset is not None:
        res["index"] = np.asarray(subset)[res["index"]]
    save_h5(out, {"x": res["x"], "index": res["index"], "residual_ratio": res["residual_ratio"]},
            attrs={"blocks": res["blocks"], "block_seeds": [str(s) for s in res["block_seeds"]],
                   "solver": res["solver"], "shard": shard, "shards": est["shards"], "iteration": job.iteration},
            provenance=job.provenance("estep_shard", shard=shard), runtime={"seconds": res["seconds"]},
            storage=job.storage, samples=("x",))
    shutil.rmtree(partial, ignore_errors=True)


@command("gather", ids=("experiment", "variant", "iteration"), torch=False)
def gather(job: Job, out: str, shards: list[str]) -> None:
    """rule gather_posterior: shards -> posterior.h5"""
    xs, idx, ratios, info = [], [], [], []
    for path in shards:
        check_input(job, path, "shard", ("estep_shard",), iteration=job.iteration)
        data, attrs = load_h5(path, rule="estep_shard")
        xs.append(data["x"])
        idx.append(data["index"])
        ratios.append(data["residual_ratio"])
        info.append({"file": Path(path).name, "sha256": verify(path)["sha256"], "blocks": attrs["blocks"],
                     "block_seeds": attrs["block_seeds"], "solver": attrs["solver"]})
    index = np.concatenate(idx)
    order = np.argsort(index, kind="stable")
    exp = job.config.get("experiments", {}).get(job.experiment, {})  # gather reads no other experiment key
    repeats = int(exp.get("estep", {}).get("samples_per_observation", 1))
    if np.any(np.unique(index, return_counts=True)[1] != repeats):
        raise ArtifactError(f"{out}: shards overlap or miss samples (every observation index must occur "
                            f"estep.samples_per_observation = {repeats} times)")
    x = np.concatenate(xs)[order]
    if not np.isfinite(x).all():
        raise ArtifactError(f"{out}: non-finite posterior samples in shards")
    save_h5(out, {"x": x, "index": index[order], "residual_ratio": np.concatenate(ratios)[order]},
            attrs={"shards": info, "iteration": job.iteration}, provenance=job.provenance("gather_posterior"),
            storage=job.storage, samples=("x",))


@command("mstep", ids=("experiment", "variant", "iteration"))
def mstep(job: Job, out: str, posterior: str | None = None, observations: str | None = None,
          previous: str | None = None) -> None:
    """rule mstep: the method's M-step on posterior.h5 (or on the observations) -> model.pt

    Under ``torchrun`` (``mstep.gpus`` > 1) every rank trains (:mod:`emprior.training.mstep`) and rank 0
    alone writes model.pt and removes the resume state."""
    from emprior.core import distributed

    try:
        _mstep(job, out, posterior, observations, previous)
    finally:
        distributed.shutdown()


def _mstep(job: Job, out: str, posterior: str | None, observations: str | None, previous: str | None) -> None:
    import torch

    from emprior.core import distributed
    from emprior.data.observations import load_observations
    from emprior.priors.checkpoint import load_prior

    check_iteration(job, 1)
    check_input(job, posterior, "--posterior", ("gather_posterior",), iteration=job.iteration)
    check_input(job, previous, "--previous", MODEL_RULES, iteration=job.iteration - 1)
    check_input(job, observations, "--observations", ("observe",), same_variant=False)
    method = method_of(job)
    obs = load_observations(observations) if observations else None
    if "estep" in method.stages:
        if not posterior:
            raise ArtifactError(f"{out}: the M-step of {job.var['method']!r} needs --posterior (posterior.h5)")
        data = torch.as_tensor(load_h5(posterior, rule="gather_posterior")[0]["x"], dtype=torch.float32)
    elif obs is not None:
        data = obs.y
    else:
        raise ArtifactError(f"{out}: the M-step of {job.var['method']!r} needs --observations (observations.h5)")
    prev = load_prior(previous, rule="mstep") if previous else None
    resume = str(out) + ".resume.pt"
    ckpt, runtime = method.mstep(job, data, prev, obs, resume)
    if not distributed.is_main():
        return
    if distributed.active():
        runtime = {**runtime, "processes": distributed.world_size()}
    save_torch(out, ckpt, job.provenance("mstep"), runtime=runtime)
    Path(resume).unlink(missing_ok=True)
    Path(resume + ".prov.json").unlink(missing_ok=True)
