"""The E-step of Algorithm 1 for any method that has one: posterior samples x ~ q_{k-1}(x | y, A)
drawn block by block with the method's posterior denoiser and the experiment's diffusion sampler.

The observations are split into fixed blocks of ``estep.block_size``, each with its own seed
(``derive_seed(seed, experiment, variant, iteration, "estep", block)``); shards are contiguous runs of
blocks, so the samples do not depend on the number of shards.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emprior.core.errors import NumericalError
from emprior.core.log import get_logger
from emprior.diffusion.samplers import sample
from emprior.diffusion.schedule import Schedule

if TYPE_CHECKING:
    from emprior.core.job import Job

log = get_logger("emprior.methods.estep")

# solver statistics that add up over blocks and shards; the others are averaged
COUNTERS = ("calls", "vjps", "breakdowns", "iterations")


def shard_blocks(n: int, block_size: int, shards: int, shard: int) -> list[int]:
    """Blocks (of ``block_size`` observations) that shard ``shard`` of ``shards`` processes."""
    n_blocks = math.ceil(n / block_size)
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return list(range(shard * n_blocks // shards, (shard + 1) * n_blocks // shards))


def residual_ratio(op, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||y - A x||^2 / (m Sigma_y) per observation: ~1 for samples consistent with the noise model.

    m counts the measured entries only, so the zeros of masked pixels do not dilute it."""
    r = (y - op.A(x)).reshape(len(y), -1)
    measured = op.measured(y)
    if measured is None:
        m = torch.full((len(y),), r.shape[1], device=r.device)
    else:
        m = torch.broadcast_to(measured, y.shape).reshape(len(y), -1).sum(1).clamp_min(1)
    return r.square().sum(1) / (m * op.noise_std**2)


def merge_stats(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Solver statistics of several blocks or shards in one: counters summed, the rest averaged."""
    values: dict[str, list[float]] = {}
    for s in stats:
        for k, v in (s or {}).items():
            if isinstance(v, torch.Tensor):
                v = float(v.float().mean()) if v.numel() else 0.0
            if isinstance(v, (int, float)):
                values.setdefault(k, []).append(float(v))
    return {k: (float(sum(v)) if k in COUNTERS else sum(v) / len(v)) for k, v in values.items()}


def run_estep(prior, method, obs, job: Job, blocks: list[int], shard: int = 0, progress: bool = False,
              stream: str = "estep") -> dict[str, Any]:
    """Posterior samples x ~ q_{k-1}(x | y, A) for the observations in ``blocks`` on the job's device;
    ``stream`` names the random stream (the E-step's own, or another for draws that must not reuse its
    noise). Returned tensors are on the CPU."""
    exp_cfg = job.exp
    est = exp_cfg["estep"]
    schedule = Schedule(**exp_cfg["schedule"])
    device = job.device
    bs = est["block_size"]
    n = len(obs)
    xs, idx, ratios, seeds, stats = [], [], [], [], []
    start = time.perf_counter()
    for b in blocks:
        rows = np.arange(b * bs, min((b + 1) * bs, n))
        op = obs.op[rows] if len(obs.op) > 1 else obs.op
        y = obs.y[rows].to(device)
        post = method.posterior(prior, op, y)
        gen = job.generator(stream, b)
        seeds.append(job.derive_seed(stream, b))
        x_T = schedule.sigma_max * torch.randn((len(rows), *obs.x_shape), generator=gen, device=device)
        try:
            x = sample(post, x_T, schedule, est["steps"], est["sampler"], corrections=est.get("corrections", 0),
                       tau=est.get("tau", 0.1), eta=est.get("eta", 1.0), generator=gen, progress=progress)
        except NumericalError as exc:
            raise NumericalError(f"E-step {job.experiment}/{job.variant} iteration {job.iteration}, shard {shard}, "
                                 f"block {b}: {exc}") from None
        xs.append(x.float().cpu())
        idx.append(rows)
        ratios.append(residual_ratio(op, y, x).float().cpu())
        stats.append(dict(getattr(post, "stats", {})))
        log.info("block %d: %d observations, mean residual ratio %.3g", b, len(rows), float(ratios[-1].mean()))
    elapsed = time.perf_counter() - start
    x_all = torch.cat(xs) if xs else torch.empty((0, *obs.x_shape))
    return {"x": x_all, "index": np.concatenate(idx) if idx else np.zeros(0, np.int64),
            "residual_ratio": torch.cat(ratios) if ratios else torch.empty(0),
            "block_seeds": seeds, "blocks": blocks, "solver": merge_stats(stats), "seconds": elapsed}
