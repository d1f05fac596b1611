"""The E-step of Algorithm 1 for any method that has one: posterior samples x ~ q_{k-1}(x | y, A)
drawn block by block with the method's posterior denoiser and the experiment's diffusion sampler.

The observations are split into fixed blocks of ``estep.block_size``, each with its own seed
(``derive_seed(seed, experiment, variant, iteration, "estep", block)``); shards are contiguous runs of
blocks, so the samples do not depend on the number of shards.

With ``partial`` (the estep_shard job: ``shard_j.h5.blocks/``) every finished block is written to
``block_<b>.h5`` there (atomically, checksummed, with its seed and the ``key`` of what made it: model,
observations and config checksums); a rerun reuses the blocks whose seed and key match and recomputes
the rest, so a shard killed or preempted (SIGTERM: stop after the current block) loses at most one
block and still ends with the same samples, bit for bit.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emprior.core import preempt
from emprior.core.artifacts import load_h5, save_h5
from emprior.core.errors import ArtifactError, NumericalError, Preempted
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


def block_path(partial: str | Path, block: int) -> Path:
    return Path(partial) / f"block_{block:05d}.h5"


def load_block(path: Path, seed: int, key: dict[str, str], n_rows: int
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]] | None:
    """A finished block's (x, residual ratios, solver statistics) if ``path`` holds one made with
    this ``seed`` and ``key`` (and intact); None (recompute it) otherwise."""
    if not path.exists():
        return None
    try:
        data, attrs = load_h5(path, rule="estep_shard (finished block)")
    except ArtifactError as exc:
        log.warning("%s: unusable, recomputed (%s)", path.name, exc)
        return None
    # str(): load_h5 decodes attributes that read as JSON (a seed "123" comes back as 123)
    made = {k: str(attrs.get(k)) for k in key}
    if str(attrs.get("seed")) != str(seed) or made != key or len(data.get("x", ())) != n_rows:
        log.info("%s: made with another seed, model, observations or config; recomputed", path.name)
        return None
    return torch.from_numpy(data["x"]), torch.from_numpy(data["residual_ratio"]), dict(attrs["solver"])


@preempt.stops_on_sigterm(when="partial")
def run_estep(prior, method, obs, job: Job, blocks: list[int], shard: int = 0, progress: bool = False,
              stream: str = "estep", partial: str | Path | None = None,
              key: dict[str, str] | None = None) -> dict[str, Any]:
    """Posterior samples x ~ q_{k-1}(x | y, A) for the observations in ``blocks`` on the job's device;
    ``stream`` names the random stream (the E-step's own, or another for draws that must not reuse its
    noise). Returned tensors are on the CPU.

    ``partial``: folder of finished blocks, reused where their seed and ``key`` (name -> checksum of
    what the samples depend on) match; with it, SIGTERM stops after the current block (written) with
    :class:`~emprior.core.errors.Preempted`."""
    exp_cfg = job.exp
    # the method may walk its own noise levels (EMDiffusion: the reference's VP chain)
    schedule, est = method.estep_chain(Schedule(**exp_cfg["schedule"]), exp_cfg["estep"])
    bs = est["block_size"]
    n = len(obs)
    xs, idx, ratios, seeds, stats = [], [], [], [], []
    start = time.perf_counter()
    key = {k: str(v) for k, v in (key or {}).items()}
    for b in blocks:
        rows = np.arange(b * bs, min((b + 1) * bs, n))
        seed = job.derive_seed(stream, b)
        done = load_block(block_path(partial, b), seed, key, len(rows)) if partial else None
        if done is not None:
            x_b, ratio_b, stats_b = done
            log.info("block %d: %d observations, reused from %s", b, len(rows), block_path(partial, b))
        else:
            x_b, ratio_b, stats_b = _sample_block(prior, method, obs, job, schedule, est, rows, stream, b, shard,
                                                  progress)
            if partial:
                save_h5(block_path(partial, b), {"x": x_b, "residual_ratio": ratio_b},
                        attrs={"block": b, "seed": str(seed), "solver": merge_stats([stats_b]), **key},
                        storage=job.storage, samples=("x",))
        xs.append(x_b)
        idx.append(rows)
        ratios.append(ratio_b)
        seeds.append(seed)
        stats.append(stats_b)
        if partial and preempt.requested() and b != blocks[-1]:
            raise Preempted(f"E-step {job.experiment}/{job.variant} iteration {job.iteration}, shard {shard}: "
                            f"SIGTERM, stopped after block {b} ({len(xs)} of {len(blocks)} blocks saved in "
                            f"{partial}); a rerun reuses them")
    elapsed = time.perf_counter() - start
    x_all = torch.cat(xs) if xs else torch.empty((0, *obs.x_shape))
    return {"x": x_all, "index": np.concatenate(idx) if idx else np.zeros(0, np.int64),
            "residual_ratio": torch.cat(ratios) if ratios else torch.empty(0),
            "block_seeds": seeds, "blocks": blocks, "solver": merge_stats(stats), "seconds": elapsed}


def _sample_block(prior, method, obs, job: Job, schedule: Schedule, est: dict[str, Any], rows: np.ndarray,
                  stream: str, b: int, shard: int, progress: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """One block's posterior samples and residual ratios (on the CPU) and its solver statistics."""
    device = job.device
    op = obs.op[rows] if len(obs.op) > 1 else obs.op
    y = obs.y[rows].to(device)
    post = method.posterior(prior, op, y)
    gen = job.generator(stream, b)
    x_T = schedule.sigma_max * torch.randn((len(rows), *obs.x_shape), generator=gen, device=device)
    try:
        x = sample(post, x_T, schedule, est["steps"], est["sampler"], corrections=est.get("corrections", 0),
                   tau=est.get("tau", 0.1), eta=est.get("eta", 1.0), rho=est.get("rho", 7.0),
                   generator=gen, progress=progress)
    except NumericalError as exc:
        raise NumericalError(f"E-step {job.experiment}/{job.variant} iteration {job.iteration}, shard {shard}, "
                             f"block {b}: {exc}") from None
    ratio = residual_ratio(op, y, x).float().cpu()
    log.info("block %d: %d observations, mean residual ratio %.3g", b, len(rows), float(ratio.mean()))
    return x.float().cpu(), ratio, dict(getattr(post, "stats", {}))
