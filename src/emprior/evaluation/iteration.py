"""metrics.json of one EM iteration: sample quality and the audit record.

Sample quality of q_k (from ``prior_samples.h5`` against ``clean.h5``):
- ``sinkhorn``: debiased Sinkhorn divergence S(q, p1) - S(p1, p2) in data space, as the official DiEM
  code reports it (p1, p2 halves of the true latents); for images this is in pixel space. Solved by
  ``evaluate.sinkhorn_backend`` (default "torch"; "geomloss" is ~8x faster on 512 points in R^5 and
  agrees to ~1 %, far inside the metric's sample noise), recorded next to the value. With
  ``evaluate.sinkhorn_repeats`` R > 1 it is the mean of R such numbers, each on its own chunk of the
  prior samples and its own split of p (values and standard error recorded); ``sinkhorn_scaling`` is the
  solver's epsilon-scaling factor (default 0.9; 0.8 is 2x faster and within ~2 % on the manifold).
- ``fid`` / ``is`` (``evaluate.fid``): torch-fidelity, the samples against the clean images' Inception
  statistics of the rule fid_reference (:mod:`emprior.evaluation.metrics.fid_reference`); without the
  weights, ``null`` and the reason in ``fid_status``.
- ``fd_digits`` / ``is_digits`` (``evaluate.classifier: digits``): the same formulas in the features of
  a small classifier trained on the clean digits (:mod:`emprior.evaluation.metrics.classifier`), CPU stand-ins.

Audit (why an iteration is trustworthy or not):
- ``estep.residual_ratio_mean``: mean of ||y - A x||^2 / (m Sigma_y) over observations (-> 1 for
  posterior samples consistent with the noise model), with its quantiles;
- ``estep.solver``: CG/GMRES iterations, residual norms, breakdowns; shard seeds and timings;
- ``mstep``: loss curve summary, steps, seconds, posterior samples left out by ``mstep.max_abs``;
  ``artifacts``: sha256 of every input artifact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from emprior.core.artifacts import load_h5, load_torch, runtime_of, save_json, verify
from emprior.core.log import get_logger

log = get_logger("emprior.evaluation.iteration")


def loss_summary(loss: list[float]) -> dict[str, Any]:
    if not loss:
        return {}
    tail = loss[-max(1, len(loss) // 10):]
    return {"first": loss[0], "last": loss[-1], "min": min(loss), "tail_mean": float(np.mean(tail)),
            "n_points": len(loss), "curve": [float(v) for v in loss[:: max(1, len(loss) // 20)]]}


def sample_quality(samples: np.ndarray, clean: np.ndarray, ev: dict[str, Any], seed: int,
                   fid_reference: str | None = None, cuda: bool = False) -> dict[str, Any]:
    from emprior.evaluation.metrics.sinkhorn import debiased_to_reference

    out: dict[str, Any] = {}
    q = samples.reshape(len(samples), -1).astype(np.float64)
    p = clean.reshape(len(clean), -1).astype(np.float64)
    rng = np.random.default_rng(seed)
    repeats = int(ev.get("sinkhorn_repeats", 1))
    if repeats < 1 or len(q) // repeats < 1:
        raise ValueError(f"evaluate.sinkhorn_repeats: need 1 <= repeats <= n_samples ({len(q)}), got {repeats}")
    n_ref = min(len(p), 2 * (len(q) // repeats))
    m = n_ref // 2
    backend = ev.get("sinkhorn_backend", "torch")
    kw = {"reg": ev.get("sinkhorn_reg", 1e-3), "backend": backend, "scaling": ev.get("sinkhorn_scaling", 0.9)}
    # Repeat r: the r-th chunk of m samples against its own random half-split of the reference, so the
    # mean averages out both the draw and the split (each ~0.03-0.04 on the manifold at m = 1024).
    values = []
    for r in range(repeats):
        p_r = p[rng.permutation(len(p))[:n_ref]]
        values.append(float(debiased_to_reference(q[r * m:(r + 1) * m], p_r, rng=rng, **kw)))
    out["sinkhorn"] = float(np.mean(values))
    if repeats > 1:
        out["sinkhorn_repeats"] = values
        out["sinkhorn_se"] = float(np.std(values, ddof=1) / np.sqrt(repeats))
    out["sinkhorn_reg"] = kw["reg"]
    out["sinkhorn_scaling"] = kw["scaling"]
    out["sinkhorn_backend"] = backend
    if ev.get("classifier") == "digits":  # FID/IS stand-ins (emprior.evaluation.metrics.classifier)
        from emprior.evaluation.metrics.classifier import digits_scores

        out.update(digits_scores(samples, clean))
    if samples.ndim == 4:
        out.update(fid_quality(samples, fid_reference, cuda))
    return out


def fid_quality(samples: np.ndarray, fid_reference: str | None, cuda: bool = False) -> dict[str, Any]:
    """fid, is (mean over splits), is_std and fid_status of image samples against the reference statistics
    file (given exactly when ``evaluate.fid`` is on); null and the reason when off or without weights."""
    from emprior.evaluation.metrics import MetricUnavailable
    from emprior.evaluation.metrics.fid_reference import fid_is_to_reference, load_reference

    if fid_reference is None:
        res: Any = MetricUnavailable("n/a: evaluate.fid is off for this experiment")
    else:
        res = fid_is_to_reference(samples, load_reference(fid_reference), cuda=cuda)
    if isinstance(res, MetricUnavailable):
        return {"fid": None, "is": None, "fid_status": res.reason}
    return {"fid": res["fid"], "is": res["is_mean"], "is_std": res["is_std"], "fid_status": "ok",
            "fid_official_weights": res["official_weights"]}


def iteration_metrics(job, model: str, samples: str, clean: str, observations: str, posterior: str | None, out: str,
                      estep_check: str | None = None, fid_reference: str | None = None) -> None:
    """metrics.json of ``job``'s iteration (see the module docstring for its sections)."""
    from emprior.core.rng import derive_seed
    from emprior.data.observations import load_clean
    from emprior.methods.estep import merge_stats

    config, experiment, variant, iteration = job.config, job.experiment, job.variant, job.iteration
    exp = job.exp
    ckpt = load_torch(model)
    sdata, sattrs = load_h5(samples, rule="prior_samples")
    x_clean = load_clean(clean)
    record: dict[str, Any] = {"experiment": experiment, "variant": variant, "iteration": iteration,
                              "kind": ckpt.get("kind")}
    x = sdata["x"]
    finite = bool(np.isfinite(x).all())
    record["prior_samples"] = {"n": int(len(x)), "finite": finite,
                               "mean_abs": float(np.nanmean(np.abs(x)))}
    if finite:
        record["quality"] = sample_quality(x, x_clean, exp["evaluate"],
                                           derive_seed(config["seed"], experiment, "metrics", iteration),
                                           fid_reference, cuda=job.device.type == "cuda")
    else:
        record["quality"] = {"sinkhorn": None, "error": "non-finite prior samples"}
    if ckpt.get("kind") == "gaussian":
        record["init"] = {"log_evidence": ckpt.get("log_evidence"), "rank": int(len(ckpt["s"])),
                          "tau": ckpt.get("tau")}
    else:
        train = ckpt.get("train", {})
        if train.get("stage") == "final":  # a method's final model (e.g. DiffEM's), after iteration - 1 EM iterations
            record["stage"] = "final"
            record["em_iterations"] = iteration - 1
            record["final_source"] = train.get("source")
        record["mstep"] = {"steps": train.get("steps"), "loss": loss_summary(train.get("loss", [])),
                           "dropped": train.get("dropped", 0), "n_data": train.get("n_data")}
    artifacts = {"model.pt": verify(model)["sha256"], "prior_samples.h5": verify(samples)["sha256"],
                 "observations.h5": verify(observations)["sha256"]}
    if posterior:
        pdata, pattrs = load_h5(posterior, rule="gather_posterior")
        ratio = pdata["residual_ratio"]
        shards = pattrs.get("shards", [])
        record["estep"] = {
            "n": int(len(ratio)),
            "finite": bool(np.isfinite(pdata["x"]).all()),
            "residual_ratio_mean": float(np.mean(ratio)),
            "residual_ratio_q": {q: float(np.quantile(ratio, float(q))) for q in ("0.1", "0.5", "0.9")},
            "solver": merge_stats([sh.get("solver") for sh in shards]),
            "shards": [{"file": s["file"], "sha256": s["sha256"], "blocks": s["blocks"],
                        "block_seeds": s["block_seeds"]} for s in shards],
        }
        record["estep"]["measured_rmse"] = _measured_rmse(observations, pdata, x)
        est = exp["estep"]
        solves = len(ratio) * est["steps"] * (1 + est.get("corrections", 0))
        record["estep"]["breakdown_fraction"] = record["estep"]["solver"].get("breakdowns", 0.0) / max(1, solves)
        artifacts["posterior.h5"] = verify(posterior)["sha256"]
    if fid_reference:
        artifacts["fid_reference.h5"] = verify(fid_reference)["sha256"]
    if estep_check:
        from emprior.core.artifacts import load_json

        check = load_json(estep_check, rule="estep_check")
        record["estep_check"] = {k: v for k, v in check.items() if k != "provenance"}
        artifacts["estep_check.json"] = verify(estep_check)["sha256"]
    record["artifacts"] = artifacts
    # Run-dependent numbers (from the sidecars): the only part of metrics.json that differs between
    # two runs of the same config and seed.
    timing = {"model": runtime_of(model), "prior_samples": runtime_of(samples)}
    if posterior:
        shard_dir = Path(posterior).parent / "posterior"
        timing["estep_shards"] = {s["file"]: runtime_of(shard_dir / s["file"]).get("seconds") for s in shards}
    if estep_check:
        timing["estep_check"] = runtime_of(estep_check).get("seconds")
    record["timing"] = timing
    save_json(out, _clean_floats(record), job.provenance("iteration_metrics"))
    log.info("metrics %s/%s iter %d: %s", experiment, variant, iteration, record.get("quality"))


def _measured_rmse(observations: str, pdata: dict[str, np.ndarray], prior_x: np.ndarray) -> dict[str, Any]:
    """Measured-pixel RMSE of the E-step samples, and of the prior samples paired with the same first
    observations (what ignoring y scores; :mod:`emprior.evaluation.measured`)."""
    import torch

    from emprior.data.observations import load_observations
    from emprior.evaluation.measured import measured_rmse, prior_measured_rmse

    obs = load_observations(observations)
    rows = np.asarray(pdata["index"], dtype=np.int64)  # positions in observations.h5 (the E-step's rows)
    op = obs.op[rows] if len(obs.op) > 1 else obs.op
    return {"posterior": measured_rmse(op, obs.y[rows], torch.as_tensor(pdata["x"])),
            "prior_samples": prior_measured_rmse(obs, prior_x) if np.isfinite(prior_x).all() else None,
            "noise_std": float(obs.noise_std)}


def _clean_floats(obj: Any) -> Any:
    """JSON has no NaN/Inf: write them as null (the audit flags them)."""
    if isinstance(obj, dict):
        return {str(k): _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_metrics(paths: list[str | Path]) -> list[dict[str, Any]]:
    from emprior.core.artifacts import load_json

    return [load_json(p, rule="iteration_metrics") for p in paths]
