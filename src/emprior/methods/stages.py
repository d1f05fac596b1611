"""Stage implementations that several EM methods share: the Gaussian q_0 fitted by EM (Sec. 4.1) and
the denoising-score-matching M-step of an unconditional denoiser (Algorithm 1, lines 7-14)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from emprior.core.errors import ArtifactError
from emprior.core.log import get_logger
from emprior.core.rng import derive_seed

if TYPE_CHECKING:
    from emprior.core.job import Job
    from emprior.data.observations import Observations
    from emprior.priors.checkpoint import Prior

log = get_logger("emprior.methods.stages")


def gaussian_init(job: Job, obs: Observations) -> tuple[dict[str, Any], dict[str, Any]]:
    """q_0 = N(mu_x, Sigma_x) fitted to the observations by EM (closed-form E- and M-steps), with a
    PPCA rank-r covariance (``init.rank``); the checkpoint of :func:`~emprior.priors.checkpoint.gaussian_checkpoint`."""
    from emprior.priors.checkpoint import gaussian_checkpoint
    from emprior.priors.gaussian_em import fit_gaussian_em

    init = job.exp["init"]
    start = time.perf_counter()
    if init.get("estimator", "dense") == "sampled":  # Monte Carlo EM (official fit_moments), large latents
        from emprior.methods import make_method
        from emprior.priors.gaussian_mc import fit_gaussian_sampled

        var = dict(job.var)
        if "maxiter" in init:  # the official fit_moments solves with CG 5, the E-steps with 3
            var["posterior"] = {**var.get("posterior", {}), "maxiter": int(init["maxiter"])}
        method = make_method(var, job.exp, where=f"experiments.{job.experiment}.variants.{job.variant}")
        result = fit_gaussian_sampled(job, obs, method)
        return gaussian_checkpoint(result, obs.x_shape), {"seconds": time.perf_counter() - start}
    result = fit_gaussian_em(obs.op, obs.y, obs.x_shape, obs.noise_std, init["iterations"], rank=init.get("rank"),
                             dense_max=init.get("dense_max", 4096))
    log.info("gaussian EM: log evidence per observation %s", [round(v, 2) for v in result.log_evidence])
    return gaussian_checkpoint(result, obs.x_shape), {"seconds": time.perf_counter() - start}


def build_net(job: Job, x_shape: tuple[int, ...], net_cfg: dict[str, Any] | None = None) -> torch.nn.Module:
    """The experiment's denoiser, initialised from the variant's ``net_init`` stream (the same for
    every iteration: an M-step that starts fresh starts from the same weights), on the job's device."""
    from emprior.nets import build_denoiser

    torch.manual_seed(derive_seed(job.seed, job.experiment, job.variant, "net_init"))
    return build_denoiser(dict(net_cfg or job.exp["denoiser"]), x_shape).to(job.device)


def denoiser_mstep(job: Job, x: torch.Tensor, previous: Prior | None, resume_path: str,
                   net_cfg: dict[str, Any] | None = None, mstep_cfg: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train d_theta by DSM (Eq. 4) on ``x`` from ``previous``'s raw weights (a fresh net if None);
    returns the ``kind="denoiser"`` checkpoint (EMA weights for sampling, raw weights to continue from)."""
    from emprior.diffusion.schedule import Schedule
    from emprior.training.mstep import em_mstep

    exp = job.exp
    x_shape = tuple(x.shape[1:])
    net_cfg = dict(net_cfg or exp["denoiser"])
    net = build_net(job, x_shape, net_cfg)
    if previous is not None:
        if previous.kind != "denoiser":
            raise ArtifactError(f"previous model: expected a denoiser checkpoint, got {previous.kind!r}")
        net.load_state_dict(previous.checkpoint["raw_weights"])
    gen = job.generator("mstep")
    schedule = Schedule(**exp["schedule"])
    result = em_mstep(net, x.to(job.device), schedule, mstep_cfg or exp["mstep"], gen,
                      f"M-step {job.context}", resume_path=resume_path, precision=job.precision)
    ckpt = {"kind": "denoiser", "x_shape": list(x_shape), "net": net_cfg,
            "schedule": dict(exp["schedule"]), "weights": cpu_state(net.state_dict()),
            "raw_weights": cpu_state(result["raw"]),
            "train": {"loss": result["loss"], "steps": result["steps"], "dropped": result["dropped"],
                      "n_data": result["n_data"]}}
    return ckpt, {"seconds": result["seconds"], "resumed_from": result["resumed_from"]}


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with its tensors on the CPU (artifacts are written from CPU tensors); a CPU one is
    returned as it is, so model.pt keeps the same bytes (state_dict's ``_metadata`` included)."""
    if all(v.device.type == "cpu" for v in state.values()):
        return state
    out = type(state)((k, v.detach().cpu()) for k, v in state.items())
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata
    return out
