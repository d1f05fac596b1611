"""EM methods (Algorithm 1). A method is a small class: how q_0 is chosen, how the E-step draws
x ~ q_k(x | y, A), and which loss the M-step minimises. DiEM is the paper's method:

- q_0: Gaussian fitted by EM (:mod:`emprior.priors.gaussian_em`);
- E-step: MMPS (Algorithm 3, Eqs. 19-23) inside the variant's sampler; covariance ``tweedie`` (Eq. 21,
  CG truncated to ``maxiter``) or a heuristic (``sigma_t``, ``inv`` = (I + Sigma_t^-1)^-1);
- M-step: denoising score matching (Eq. 4) from the previous weights (:mod:`emprior.training.mstep`).

The E-step is split into fixed blocks of ``block_size`` observations, each with its own seed
(``derive_seed(seed, experiment, variant, iteration, "estep", block)``); shards are contiguous runs of
blocks, so the samples do not depend on the number of shards.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from emprior.diffusion.samplers import sample
from emprior.diffusion.schedule import Schedule
from emprior.core.errors import NumericalError
from emprior.core.log import get_logger
from emprior.core.rng import derive_seed, torch_generator

log = get_logger("emprior.methods.diem")


def shard_blocks(n: int, block_size: int, shards: int, shard: int) -> list[int]:
    """Blocks (of ``block_size`` observations) that shard ``shard`` of ``shards`` processes."""
    n_blocks = math.ceil(n / block_size)
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return list(range(shard * n_blocks // shards, (shard + 1) * n_blocks // shards))


class DiEM:
    """The paper's method (Sec. 4)."""

    name = "diem"

    def __init__(self, variant_cfg: dict[str, Any]):
        self.cfg = variant_cfg

    def posterior_options(self) -> dict[str, Any]:
        cov = self.cfg.get("covariance", "tweedie")
        opts: dict[str, Any] = {"covariance": cov}
        if cov == "tweedie":
            opts["solver"] = self.cfg.get("solver", "cg")
            opts["maxiter"] = int(self.cfg.get("maxiter", 1))
        else:  # heuristic covariances make the system explicit and cheap: solve it properly
            opts["solver"] = self.cfg.get("solver", "cg")
            opts["maxiter"] = int(self.cfg.get("maxiter", 16))
        return opts

    def posterior(self, prior, op, y):
        from emprior.posterior import make_posterior

        opts = self.posterior_options()
        if opts["covariance"] == "prior":
            if prior.gaussian is None:
                raise ValueError("covariance 'prior' needs a Gaussian Sigma_x (available at iteration 1 only)")
            opts["prior"] = prior.gaussian
        return make_posterior("mmps", prior.denoiser, op, y, **opts)


METHODS = {"diem": DiEM}


def make_method(variant_cfg: dict[str, Any]):
    return METHODS[variant_cfg["method"]](variant_cfg)


def _residual_ratio(op, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||y - A x||^2 / (m Sigma_y) per observation: ~1 for samples consistent with the noise model.

    m counts the measured entries only, so the zeros of masked pixels do not dilute it."""
    r = (y - op.A(x)).reshape(len(y), -1)
    measured = op.measured(y)
    if measured is None:
        m = torch.full((len(y),), r.shape[1])
    else:
        m = torch.broadcast_to(measured, y.shape).reshape(len(y), -1).sum(1).clamp_min(1)
    return r.square().sum(1) / (m * op.noise_std**2)


def run_estep(prior, method, obs, exp_cfg: dict[str, Any], seed: int, experiment: str, variant: str,
              iteration: int, blocks: list[int], shard: int = 0, progress: bool = False,
              stream: str = "estep") -> dict[str, Any]:
    """Posterior samples x ~ q_{k-1}(x | y, A) for the observations in ``blocks``; ``stream`` names the
    random stream (the E-step's own, or another for draws that must not reuse its noise)."""
    est = exp_cfg["estep"]
    schedule = Schedule(**exp_cfg["schedule"])
    bs = est["block_size"]
    n = len(obs)
    xs, idx, ratios, seeds, stats = [], [], [], [], []
    start = time.perf_counter()
    for b in blocks:
        rows = np.arange(b * bs, min((b + 1) * bs, n))
        op = obs.op[rows] if len(obs.op) > 1 else obs.op
        y = obs.y[rows]
        post = method.posterior(prior, op, y)
        gen = torch_generator(seed, experiment, variant, iteration, stream, b)
        seeds.append(derive_seed(seed, experiment, variant, iteration, stream, b))
        x_T = schedule.sigma_max * torch.randn((len(rows), *obs.x_shape), generator=gen)
        try:
            x = sample(post, x_T, schedule, est["steps"], est["sampler"], corrections=est.get("corrections", 0),
                       tau=est.get("tau", 0.1), eta=est.get("eta", 1.0), generator=gen, progress=progress)
        except NumericalError as exc:
            raise NumericalError(f"E-step {experiment}/{variant} iteration {iteration}, shard {shard}, "
                                 f"block {b}: {exc}") from None
        xs.append(x.float())
        idx.append(rows)
        ratios.append(_residual_ratio(op, y, x).float())
        stats.append(dict(getattr(post, "stats", {})))
        log.info("block %d: %d observations, mean residual ratio %.3g", b, len(rows), float(ratios[-1].mean()))
    elapsed = time.perf_counter() - start
    x_all = torch.cat(xs) if xs else torch.empty((0, *obs.x_shape))
    return {"x": x_all, "index": np.concatenate(idx) if idx else np.zeros(0, np.int64),
            "residual_ratio": torch.cat(ratios) if ratios else torch.empty(0),
            "block_seeds": seeds, "blocks": blocks, "solver": merge_stats(stats), "seconds": elapsed}


def merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum counters and average the rest over blocks (posterior-denoiser .stats dicts)."""
    out: dict[str, Any] = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                v = float(v.float().mean()) if v.numel() else 0.0
            if isinstance(v, (int, float)):
                out.setdefault(k, []).append(float(v))
    return {k: (sum(v) if k in ("calls", "vjps", "breakdowns", "iterations") else sum(v) / len(v))
            for k, v in out.items()}
