"""One function per Snakemake rule: read the rule's inputs, call the science, write its outputs
atomically with provenance. ``emprior.pipeline.cli`` maps ``python -m emprior COMMAND`` onto these."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from emprior.config import loading as cfgmod
from emprior.core.artifacts import load_h5, save_h5, save_torch, verify
from emprior.core.errors import ArtifactError
from emprior.core.log import get_logger
from emprior.core.provenance import make_provenance
from emprior.core.rng import derive_seed, torch_generator

log = get_logger("emprior.pipeline.steps")


def _prov(config: dict[str, Any], rule: str, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    return make_provenance(config, seed if seed is not None else config.get("seed"), rule, **extra)


def dataset(config: dict[str, Any], experiment: str, out: str) -> None:
    from emprior.data import load_dataset
    from emprior.data.observations import save_clean

    exp = cfgmod.experiment(config, experiment)
    seed = derive_seed(config["seed"], experiment, "dataset")
    x = load_dataset(exp["dataset"], seed)
    log.info("dataset %s: %d latents of shape %s", experiment, len(x), tuple(x.shape[1:]))
    save_clean(out, x, exp["dataset"], _prov(config, "dataset", seed))


def observe(config: dict[str, Any], experiment: str, clean: str, out: str) -> None:
    from emprior.data.observations import corrupt, load_clean, save_observations

    exp = cfgmod.experiment(config, experiment)
    x = load_clean(clean)
    obs = corrupt(x, exp["observation"], config["seed"], experiment)
    log.info("observe %s: %d observations y of shape %s, noise std %g", experiment, len(obs),
             tuple(obs.y.shape[1:]), obs.noise_std)
    save_observations(out, obs, _prov(config, "observe"))


def init_prior(config: dict[str, Any], experiment: str, variant: str, observations: str, out: str) -> None:
    from emprior.priors.gaussian_em import fit_gaussian_em
    from emprior.priors.checkpoint import gaussian_checkpoint
    from emprior.data.observations import load_observations

    exp = cfgmod.experiment(config, experiment)
    obs = load_observations(observations)
    init = exp["init"]
    start = time.perf_counter()
    result = fit_gaussian_em(obs.op, obs.y, obs.x_shape, obs.noise_std, init["iterations"], rank=init.get("rank"),
                             dense_max=init.get("dense_max", 4096))
    ckpt = gaussian_checkpoint(result, obs.x_shape)
    log.info("gaussian EM: log evidence per observation %s", [round(v, 2) for v in result.log_evidence])
    save_torch(out, ckpt, _prov(config, "init_prior", experiment=experiment, variant=variant, iteration=0),
               runtime={"seconds": time.perf_counter() - start})


def estep(config: dict[str, Any], experiment: str, variant: str, iteration: int, shard: int, model: str,
          observations: str, out: str) -> None:
    from emprior.methods.diem import make_method, run_estep, shard_blocks
    from emprior.priors.checkpoint import load_prior
    from emprior.data.observations import load_observations

    exp = cfgmod.experiment(config, experiment)
    var = cfgmod.variant(config, experiment, variant)
    obs = load_observations(observations)
    prior = load_prior(model)
    if tuple(prior.x_shape) != tuple(obs.x_shape):
        raise ArtifactError(f"{model}: prior of shape {prior.x_shape} does not match observations {obs.x_shape}")
    est = exp["estep"]
    blocks = shard_blocks(len(obs), est["block_size"], est["shards"], shard)
    res = run_estep(prior, make_method(var), obs, exp, config["seed"], experiment, variant, iteration, blocks,
                    shard=shard)
    save_h5(out, {"x": res["x"], "index": res["index"], "residual_ratio": res["residual_ratio"]},
            attrs={"blocks": res["blocks"], "block_seeds": [str(s) for s in res["block_seeds"]],
                   "solver": res["solver"], "shard": shard, "shards": est["shards"], "iteration": iteration},
            provenance=_prov(config, "estep_shard", experiment=experiment, variant=variant,
                             iteration=iteration, shard=shard),
            runtime={"seconds": res["seconds"]})


def estep_check(config: dict[str, Any], experiment: str, variant: str, model: str, observations: str,
                out: str) -> None:
    """iter_001/estep_check.json: the first E-step's sampler against the exact posterior under q_0."""
    from emprior.core.artifacts import save_json
    from emprior.methods.diem import make_method
    from emprior.evaluation.estep_check import DEFAULTS, check_estep
    from emprior.priors.checkpoint import load_prior
    from emprior.data.observations import load_observations

    exp = cfgmod.experiment(config, experiment)
    obs = load_observations(observations)
    prior = load_prior(model)
    opts = {**DEFAULTS, **exp.get("evaluate", {}).get("estep_check", {})}
    res = check_estep(prior, make_method(cfgmod.variant(config, experiment, variant)), obs, exp, config["seed"],
                      experiment, variant, opts["observations"], opts["repeats"])
    seconds = res.pop("seconds")
    if "skipped" in res:
        log.info("estep check %s/%s skipped: %s", experiment, variant, res["skipped"])
    else:
        log.info("estep check %s/%s: spread %.3f +- %.3f, bias2 %.4f +- %.4f (exact sampler: 1 and 0)",
                 experiment, variant, res["spread"], res["spread_se"], res["bias2"], res["bias2_se"])
    save_json(out, res, _prov(config, "estep_check", experiment=experiment, variant=variant, iteration=1),
              runtime={"seconds": seconds})


def gather(config: dict[str, Any], experiment: str, variant: str, iteration: int, shards: list[str],
           out: str) -> None:
    xs, idx, ratios, info = [], [], [], []
    for path in shards:
        data, attrs = load_h5(path, rule="estep_shard")
        xs.append(data["x"])
        idx.append(data["index"])
        ratios.append(data["residual_ratio"])
        info.append({"file": Path(path).name, "sha256": verify(path)["sha256"], "blocks": attrs["blocks"],
                     "block_seeds": attrs["block_seeds"], "solver": attrs["solver"]})
    index = np.concatenate(idx)
    order = np.argsort(index, kind="stable")
    if len(np.unique(index)) != len(index):
        raise ArtifactError(f"{out}: shards overlap (duplicate observation indices)")
    x = np.concatenate(xs)[order]
    if not np.isfinite(x).all():
        raise ArtifactError(f"{out}: non-finite posterior samples in shards")
    save_h5(out, {"x": x, "index": index[order], "residual_ratio": np.concatenate(ratios)[order]},
            attrs={"shards": info, "iteration": iteration},
            provenance=_prov(config, "gather_posterior", experiment=experiment, variant=variant,
                             iteration=iteration))


def mstep(config: dict[str, Any], experiment: str, variant: str, iteration: int, posterior: str,
          previous: str | None, out: str) -> None:
    import torch

    from emprior.diffusion.core import Schedule
    from emprior.priors.checkpoint import load_prior
    from emprior.nets import build_denoiser
    from emprior.training.mstep import em_mstep

    exp = cfgmod.experiment(config, experiment)
    data, _ = load_h5(posterior, rule="gather_posterior")
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    x_shape = tuple(x.shape[1:])
    torch.manual_seed(derive_seed(config["seed"], experiment, variant, "net_init"))
    net = build_denoiser(dict(exp["denoiser"]), x_shape)
    if previous:
        prev = load_prior(previous, rule="mstep")
        if prev.kind != "denoiser":
            raise ArtifactError(f"{previous}: expected a denoiser checkpoint, got {prev.kind!r}")
        net.load_state_dict(prev.checkpoint["raw_weights"])
    gen = torch_generator(config["seed"], experiment, variant, iteration, "mstep")
    schedule = Schedule(**exp["schedule"])
    result = em_mstep(net, x, schedule, exp["mstep"], gen, f"M-step {experiment}/{variant} iteration {iteration}",
                      resume_path=str(out) + ".resume.pt")
    ckpt = {"kind": "denoiser", "x_shape": list(x_shape), "net": dict(exp["denoiser"]),
            "schedule": dict(exp["schedule"]), "weights": net.state_dict(), "raw_weights": result["raw"],
            "train": {"loss": result["loss"], "steps": result["steps"], "dropped": result["dropped"],
                      "n_data": result["n_data"]}}
    save_torch(out, ckpt, _prov(config, "mstep", experiment=experiment, variant=variant, iteration=iteration),
               runtime={"seconds": result["seconds"], "resumed_from": result["resumed_from"]})
    Path(str(out) + ".resume.pt").unlink(missing_ok=True)
    Path(str(out) + ".resume.pt.prov.json").unlink(missing_ok=True)


def prior_samples(config: dict[str, Any], experiment: str, variant: str, iteration: int, model: str,
                  out: str) -> None:
    from emprior.priors.checkpoint import load_prior

    exp = cfgmod.experiment(config, experiment)
    prior = load_prior(model)
    gen = torch_generator(config["seed"], experiment, variant, iteration, "prior_samples")
    start = time.perf_counter()
    x = prior.sample(exp["evaluate"]["n_samples"], exp, gen)
    save_h5(out, {"x": x.float()}, attrs={"iteration": iteration},
            provenance=_prov(config, "prior_samples", experiment=experiment, variant=variant, iteration=iteration),
            runtime={"seconds": time.perf_counter() - start})


def fig2(config: dict[str, Any], out_csv: str, out_png: str) -> None:
    from emprior.studies import fig2 as fig2mod

    fig2mod.main(config["fig2"], derive_seed(config["seed"], "fig2"), out_csv, out_png, _prov(config, "fig2"))


def table1(config: dict[str, Any], metrics: list[str], out_csv: str, out_md: str, out_tex: str) -> None:
    from emprior.report.tables import table1_frame, write_table

    df = table1_frame(config, metrics)
    exp = ", ".join(config.get("tables", {}).get("table1", {}).get("experiments", []))
    write_table(df, out_csv, out_md, out_tex, _prov(config, "table1"),
                caption=f"Table 1: final models trained on corrupted data (this run: {exp}; paper: CIFAR-10). "
                        "Sinkhorn = debiased Sinkhorn divergence to the clean data (lower is better). "
                        "estep_bias2_it1 / estep_spread_it1: iteration 1's E-step against the exact "
                        "posterior under the Gaussian q_0 (an exact sampler: 0 / 1).")


def figures(config: dict[str, Any], experiment: str, metrics: list[str], out: str) -> None:
    from emprior.report.tables import metric_curves

    metric_curves(config, experiment, metrics, out, _prov(config, "figures", experiment=experiment))


def fig3(config: dict[str, Any], experiment: str, clean: str, samples: list[str], out: str) -> None:
    import re

    from emprior.data.observations import load_clean
    from emprior.report.tables import manifold_marginals

    by_iter = {}
    for path in samples:
        k = int(re.search(r"iter_(\d+)", str(path)).group(1))
        by_iter[k] = load_h5(path, rule="prior_samples")[0]["x"]
    manifold_marginals(by_iter, load_clean(clean), out, _prov(config, "fig3", experiment=experiment))


def table4(config: dict[str, Any], out_csv: str, out_md: str) -> None:
    from emprior.studies import sampler_accuracy as sampler_benchmark

    sampler_benchmark.main(config["sampler_benchmark"], derive_seed(config["seed"], "table4"), out_csv, out_md,
                           _prov(config, "table4"),
                           lpips_weights_dir=(config.get("metrics") or {}).get("lpips_weights_dir"))


def table5(config: dict[str, Any], out_csv: str, out_md: str) -> None:
    from emprior.studies import sampler_cost as cost_benchmark

    cost_benchmark.main(config["cost_benchmark"], derive_seed(config["seed"], "table5"), out_csv, out_md,
                        _prov(config, "table5"))
