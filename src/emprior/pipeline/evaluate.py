"""Rules that judge an EM iteration: ``prior_samples`` (or, with ``evaluate.shards`` > 1,
``prior_samples_shard`` -> ``gather_prior_samples``), ``estep_check`` (iteration 1) and
``iteration_metrics`` (metrics.json, the audit record); ``fid_reference``, once per experiment with
``evaluate.fid``, the Inception statistics of the clean images that FID compares the samples to."""

from __future__ import annotations

import time

from emprior.core.artifacts import save_h5, save_json
from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.core.log import get_logger
from emprior.pipeline.commands import command
from emprior.pipeline.em import MODEL_RULES, method_of
from emprior.pipeline.inputs import check_input, check_iteration, check_shard

log = get_logger("emprior.pipeline.evaluate")


def _write_prior_samples(job: Job, model: str, out: str, n: int, keys: tuple, rule: str, attrs: dict,
                         **ids: int) -> None:
    """``n`` samples of q_k (``model``) drawn from the job's stream ``keys``, written to ``out``."""
    from emprior.priors.checkpoint import load_prior

    check_iteration(job, 0, extra=1)  # K + 1: a final stage's samples and metrics
    check_input(job, model, "--model", MODEL_RULES, iteration=job.iteration)
    prior = load_prior(model, device=job.device, precision=job.precision)
    start = time.perf_counter()
    x = method_of(job).sample_prior(job, prior, n, job.generator(*keys))
    save_h5(out, {"x": x.float().cpu()}, attrs={"iteration": job.iteration, **attrs},
            provenance=job.provenance(rule, **ids), runtime={"seconds": time.perf_counter() - start},
            storage=job.storage, samples=("x",))


@command("prior-samples", ids=("experiment", "variant", "iteration"))
def prior_samples(job: Job, model: str, out: str) -> None:
    """rule prior_samples (evaluate.shards = 1): unconditional samples of q_k"""
    _write_prior_samples(job, model, out, job.exp["evaluate"]["n_samples"], ("prior_samples",), "prior_samples", {})


@command("prior-samples-shard", ids=("experiment", "variant", "iteration"))
def prior_samples_shard(job: Job, shard: int, model: str, out: str) -> None:
    """rule prior_samples_shard: shard j of evaluate.shards of the unconditional samples of q_k"""
    from emprior.evaluation.prior_shards import shard_size, shard_stream

    ev = job.exp["evaluate"]
    shards = ev.get("shards", 1)
    check_shard(job, shard, shards)
    keys = shard_stream(shards, shard)
    _write_prior_samples(job, model, out, shard_size(ev["n_samples"], shards, shard), keys, "prior_samples_shard",
                         {"shard": shard, "shards": shards, "seed": str(job.derive_seed(*keys))}, shard=shard)


@command("gather-prior-samples", ids=("experiment", "variant", "iteration"), torch=False)
def gather_prior_samples(job: Job, out: str, shards: list[str]) -> None:
    """rule gather_prior_samples: prior-sample shards -> prior_samples.h5 (in shard order)"""
    from emprior.evaluation.prior_shards import gather_shards

    ev = job.exp["evaluate"]
    for path in shards:
        check_input(job, path, "shard", ("prior_samples_shard",), iteration=job.iteration)
    x, info, seconds = gather_shards(shards, ev["n_samples"], ev.get("shards", 1), out)
    save_h5(out, {"x": x}, attrs={"iteration": job.iteration, "shards": info},
            provenance=job.provenance("gather_prior_samples"), runtime={"seconds": seconds},
            storage=job.storage, samples=("x",))


@command("estep-check", ids=("experiment", "variant"))
def estep_check(job: Job, model: str, observations: str, out: str) -> None:
    """rule estep_check: iteration 1's E-step vs the exact posterior under q_0"""
    from emprior.data.observations import load_observations
    from emprior.evaluation.estep_check import DEFAULTS, check_estep
    from emprior.priors.checkpoint import load_prior

    job.iteration = 1
    check_input(job, model, "--model", ("init_prior",), iteration=0)
    check_input(job, observations, "--observations", ("observe",), same_variant=False)
    opts = {**DEFAULTS, **job.exp.get("evaluate", {}).get("estep_check", {})}
    prior = load_prior(model, device=job.device, precision=job.precision)
    res = check_estep(prior, method_of(job), load_observations(observations), job, opts["observations"],
                      opts["repeats"])
    seconds = res.pop("seconds")
    if "skipped" in res:
        log.info("estep check %s skipped: %s", job.context, res["skipped"])
    else:
        log.info("estep check %s: spread %.3f +- %.3f, bias2 %.4f +- %.4f (exact sampler: 1 and 0)",
                 job.context, res["spread"], res["spread_se"], res["bias2"], res["bias2_se"])
    save_json(out, res, job.provenance("estep_check"), runtime={"seconds": seconds})


@command("fid-reference", ids=("experiment",))
def fid_reference(job: Job, clean: str, weights: str, out: str) -> None:
    """rule fid_reference: Inception feature statistics of the clean images (FID's reference)"""
    from emprior.data.observations import load_clean
    from emprior.evaluation.metrics import MetricUnavailable
    from emprior.evaluation.metrics.fid_reference import reference_statistics, save_reference

    x = load_clean(clean)
    if x.ndim != 4:
        raise ConfigError(f"experiments.{job.experiment}.evaluate.fid: FID/IS need images (N, C, H, W), but {clean} "
                          f"holds shape {x.shape}")
    start = time.perf_counter()
    res = reference_statistics(x, weights, cuda=job.device.type == "cuda")
    if isinstance(res, MetricUnavailable):
        log.warning("fid reference %s: %s", job.context, res.reason)
    else:
        log.info("fid reference %s: %d images, weights %s (sha256 %s...)", job.context, res.meta["n_images"],
                 weights, res.meta["weights_sha256"][:12])
    save_reference(out, res, job.provenance("fid_reference"), runtime={"seconds": time.perf_counter() - start})


@command("metrics", ids=("experiment", "variant", "iteration"))
def metrics(job: Job, model: str, samples: str, clean: str, observations: str, out: str,
            posterior: str | None = None, estep_check: str | None = None, fid_reference: str | None = None) -> None:
    """rule iteration_metrics: metrics.json (quality + audit record)"""
    from emprior.evaluation.iteration import iteration_metrics

    check_iteration(job, 0, extra=1)  # K + 1: a final stage's samples and metrics
    check_input(job, model, "--model", MODEL_RULES, iteration=job.iteration)
    check_input(job, samples, "--samples", ("prior_samples", "gather_prior_samples"), iteration=job.iteration)
    check_input(job, posterior, "--posterior", ("gather_posterior",), iteration=job.iteration)
    check_input(job, estep_check, "--estep-check", ("estep_check",), iteration=1)
    check_input(job, observations, "--observations", ("observe",), same_variant=False)
    check_input(job, clean, "--clean", ("dataset",), same_variant=False)
    iteration_metrics(job, model, samples, clean, observations, posterior, out, estep_check, fid_reference)
