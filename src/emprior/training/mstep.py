"""M-step (Algorithm 1, lines 7-14): train the denoiser d_theta by denoising score matching (Eq. 4) on
the E-step's posterior samples, starting from the previous iteration's weights with a fresh
optimiser (Appendix C: Adam, linear learning-rate decay, gradient-norm clipping, EMA, flips).

Training is resumable: every ``checkpoint_every`` steps the full state (weights, optimiser, EMA,
RNG, loss history) goes to ``<out>.resume.pt`` (not a declared output, so Snakemake keeps it when a
job dies); a rerun continues from it and gives the same weights as an uninterrupted run. On SIGTERM
(SLURM's warning before the time limit) the current step finishes, the same state is saved at once
and :class:`~emprior.core.errors.Preempted` is raised (exit status 143), so the retry loses nothing.

Several GPUs (``mstep.gpus: N``: the rule launches ``torchrun --standalone --nproc-per-node N``): every
rank holds the same generator state, so every rank draws the same global batch, augmentations and
noise; only the network evaluation is split, rank r computing rows [r B/N, (r+1) B/N) of the batch
through DistributedDataParallel (:class:`RowShard`). The outputs are all-gathered (detached), so each
rank evaluates the loss of the whole global batch, bit-identical on every rank; the gradient flows
through the rank's own rows only, and DDP's gradient average (scaled back by N) is the gradient of the
global-batch loss. The trajectory therefore does not depend on N except through float reduction order
(the network on B/N instead of B rows, the all-reduce of the gradients); the optimiser, clipping (of
the already all-reduced gradients: the global norm), lr schedule and EMA are the same on every rank.
Dropout masks come from each rank's default generator (reseeded per rank), so with dropout > 0 the
trajectories of 1 and N ranks agree in distribution only. Rank 0 alone writes the resume state (the
ranks wait for it); on a rerun every rank loads the same file.

Data loading: the training data is one tensor on the job's device (moved there once by the caller, e.g.
:func:`emprior.methods.stages.denoiser_mstep`) and batches are gathered on the device with indices drawn
on the device, so there is no host-to-device copy (nor pinned memory or loader workers to feed one)
and no host synchronisation per step except ``loss.item()`` (needed to stop on a non-finite loss
before it reaches the weights, and for the loss history); the pad-and-crop offsets stay on the device.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from emprior.core import distributed
from emprior.core.artifacts import load_torch, save_torch
from emprior.diffusion.ema import EMA
from emprior.diffusion.loss import dsm_loss
from emprior.diffusion.schedule import Schedule
from emprior.core import preempt
from emprior.core.errors import ArtifactError, NumericalError, Preempted
from emprior.core.log import get_logger
from emprior.core.precision import Precision

log = get_logger("emprior.training.mstep")


def n_steps(mstep: dict[str, Any], n_data: int) -> int:
    if "steps" in mstep:
        return int(mstep["steps"])
    return int(mstep["epochs"]) * max(1, math.ceil(n_data / mstep["batch_size"]))


def within_box(x: torch.Tensor, max_abs: float | None, context: str) -> tuple[torch.Tensor, int]:
    """Training data without the samples that have an entry with |x_i| > ``max_abs`` (None: all kept).

    The official DiEM manifold code trains only on posterior samples inside |x_i| < 3 (data in
    [-2, 2]): a few E-step samples thrown far off the data would otherwise dominate the DSM loss.
    Returns (kept samples, number left out); leaving out every sample is a NumericalError."""
    if max_abs is None:
        return x, 0
    keep = (x.reshape(len(x), -1).abs() <= max_abs).all(1)
    dropped = int((~keep).sum())
    if dropped == len(x):
        raise NumericalError(f"{context}: every posterior sample lies outside |x_i| <= {max_abs} (mstep.max_abs)")
    if dropped:
        log.info("%s: %d of %d posterior samples outside |x_i| <= %g left out", context, dropped, len(x), max_abs)
    return x[keep], dropped


def augment(x: torch.Tensor, kinds: list[str], generator: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Image augmentations of Appendix C: horizontal flips and reflection-pad & random crop (shift of at
    most ``pad`` pixels, default W/8; the official fastMRI code shakes by 4)."""
    if "hflip" in kinds:
        flip = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
        x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
    if "pad_crop" in kinds:
        pad = max(1, x.shape[-1] // 8) if pad is None else int(pad)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dxy = torch.randint(0, 2 * pad + 1, (2,), generator=generator, device=generator.device)
        # the crop by index_select with the offsets on the device: no device-to-host copy of (dx, dy)
        h, w = x.shape[-2], x.shape[-1]
        rows = torch.arange(h, device=padded.device) + dxy[1]
        cols = torch.arange(w, device=padded.device) + dxy[0]
        x = padded.index_select(-2, rows).index_select(-1, cols)
    return x


class RowShard:
    """The network as the loss sees it on one rank of a multi-process M-step: called on a global batch
    (every tensor argument whose first dimension is the batch size B is sliced; others pass as they
    are), it runs the DDP module on this rank's rows [r B/N, (r+1) B/N) and returns the outputs of all B
    rows, the other ranks' rows all-gathered and detached. One call per step (DDP's reducer expects one
    forward per backward)."""

    def __init__(self, ddp: torch.nn.Module, rank: int, world: int):
        self.ddp, self.rank, self.world = ddp, rank, world

    def __getattr__(self, name: str) -> Any:  # attributes of the wrapped network (e.g. ``channels``)
        return getattr(self.ddp.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        import torch.distributed as dist

        b = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 0).shape[0]
        lo, hi = self.rank * b // self.world, (self.rank + 1) * b // self.world

        def cut(a: Any) -> Any:
            return a[lo:hi] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == b else a

        own = self.ddp(*map(cut, args), **{k: cut(v) for k, v in kwargs.items()})
        parts = [torch.empty_like(own) for _ in range(self.world)]
        dist.all_gather(parts, own.detach().contiguous())
        parts[self.rank] = own
        return torch.cat(parts)


def shard_model(denoiser: torch.nn.Module, mstep: dict[str, Any], context: str) -> RowShard:
    """Join the process group and wrap ``denoiser`` (already on this rank's device) for this rank."""
    from torch.nn.parallel import DistributedDataParallel

    from emprior.core.errors import ConfigError
    from emprior.core.rng import derive_seed

    world, rank = distributed.world_size(), distributed.rank()
    if mstep["batch_size"] % world:
        raise ConfigError(f"{context}: mstep.batch_size {mstep['batch_size']} is not divisible by the "
                          f"{world} processes of the M-step (mstep.gpus)")
    device = next(denoiser.parameters()).device
    distributed.setup(device)
    if rank:  # dropout etc. draw from the default generator: not the same masks on every rank
        torch.manual_seed(derive_seed(torch.initial_seed(), "rank", rank))
    ddp = DistributedDataParallel(denoiser, device_ids=[device] if device.type == "cuda" else None)
    log.info("%s: rank %d of %d on %s, %d of the %d rows of every batch", context, rank, world, device,
             mstep["batch_size"] // world, mstep["batch_size"])
    return RowShard(ddp, rank, world)


@preempt.stops_on_sigterm(when="resume_path")
def train_denoiser(denoiser: torch.nn.Module, data: torch.Tensor, schedule: Schedule, mstep: dict[str, Any],
                   generator: torch.Generator, resume_path: str | Path | None = None,
                   progress: bool = False, context: str = "M-step",
                   loss_fn: Callable[..., torch.Tensor] | None = None,
                   precision: Precision | None = None, start_state: dict[str, Any] | None = None,
                   until: int | None = None) -> dict[str, Any]:
    """Train in place; returns {"loss": per-chunk mean losses, "steps", "ema": EMA or None, "seconds",
    "state"}.

    One continuous run in several calls (AmbientDiffusion's single training run cut into DAG
    iterations): ``until`` stops after that many of the run's ``steps`` (the lr schedule spans all
    ``steps``), and ``start_state`` (a previous call's ``state``: optimiser, lr schedule, EMA and step
    counter; the caller loads the weights) continues where that call stopped. ``"steps"`` is the step
    counter reached. Defaults: one whole run from step 0.

    ``precision`` (:class:`~emprior.core.precision.Precision`, default: float32, no compile) applies to
    the network's forward in the loss only: under ``autocast: bf16`` the loss, the gradients of the
    float32 parameters, clipping, Adam and the EMA stay float32.

    ``loss_fn(denoiser, x, schedule, generator, step)`` replaces the unconditional DSM loss (Eq. 4) for a
    model with another signature (DiffEM's conditional denoiser); it must draw its randomness from
    ``generator`` or from the step number, so that a resumed run stays identical.

    With ``resume_path``, SIGTERM (main thread only) finishes the current step, saves the resume state
    and raises :class:`~emprior.core.errors.Preempted`."""
    steps = n_steps(mstep, len(data))
    until = steps if until is None else min(int(until), steps)
    # foreach: one multi-tensor update instead of a Python loop over the parameters (not PyTorch's CPU default).
    opt = torch.optim.Adam(denoiser.parameters(), lr=mstep["lr"], weight_decay=mstep.get("weight_decay", 0.0),
                           foreach=True)
    lr_final = mstep.get("lr_final", mstep["lr"])
    if mstep.get("scheduler", "constant") == "linear":
        lr_lambda = lambda i: 1.0 - (1.0 - lr_final / mstep["lr"]) * min(i, steps) / steps  # noqa: E731
    else:
        lr_lambda = lambda i: 1.0  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    ema = EMA(denoiser, decay=mstep["ema_decay"]) if mstep.get("ema_decay") else None
    clip = mstep.get("clip")
    params = list(denoiser.parameters())  # once: .parameters() walks the module tree on every call
    every = int(mstep.get("checkpoint_every", max(1, steps // 4)))
    chunk = max(1, steps // 100)
    losses: list[float] = []
    running: list[float] = []
    start_step = 0
    if start_state is not None:  # continue a run (the weights are the caller's); a resume file overrides it
        opt.load_state_dict(start_state["optimizer"])
        sched.load_state_dict(start_state["scheduler"])
        if ema is not None:
            ema.load_state_dict(start_state["ema"])
        start_step = int(start_state["step"])
    first_step = start_step  # where this call began without a resume file
    resume = Path(resume_path) if resume_path else None
    if resume is not None and resume.exists():
        try:
            state = load_torch(resume, rule="mstep (resume state)")
            denoiser.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            generator.set_state(state["generator"])
            losses, running, start_step = list(state["losses"]), list(state["running"]), int(state["step"])
            log.info("%s: resumed from %s at step %d/%d", context, resume, start_step, steps)
        except (ArtifactError, KeyError, RuntimeError, ValueError) as exc:
            log.warning("%s: ignoring unusable resume state %s (%s)", context, resume, exc)
            start_step = first_step
    denoiser.train()
    # the loss's network: ``denoiser`` itself, or this rank's share of it in a multi-process M-step
    world = distributed.world_size() if distributed.active() else 1
    precision = Precision() if precision is None else precision
    net = precision.compiled(denoiser)  # shares denoiser's parameters
    model = precision.autocast_of(net if world == 1 else shard_model(net, mstep, context))
    begin = time.perf_counter()
    for step in tqdm(range(start_step, until), desc=context, disable=not progress, initial=start_step,
                     total=until):
        i = torch.randint(0, len(data), (mstep["batch_size"],), generator=generator, device=generator.device)
        x = augment(data[i], mstep.get("augment", []), generator, mstep.get("pad"))
        if loss_fn is None:
            loss = dsm_loss(model, x, schedule, generator=generator)
        else:
            loss = loss_fn(model, x, schedule, generator, step)
        value = loss.item()
        if not math.isfinite(value):
            raise NumericalError(f"{context}: non-finite loss at step {step}/{steps}")
        opt.zero_grad(set_to_none=True)
        # with N ranks each gradient holds the rank's rows only and DDP averages them: x N is the sum
        (loss if world == 1 else loss * world).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(denoiser)
        running.append(value)
        if len(running) == chunk:
            losses.append(sum(running) / len(running))
            running = []
        # SIGTERM (flag set by preempt's handler): the same state is saved at once and training stops
        stop = resume is not None and preempt.requested() and step + 1 < until
        if resume is not None and ((step + 1) % every == 0 and step + 1 < until or stop):
            if distributed.is_main():  # the ranks' states are identical: rank 0 writes, the others wait
                save_torch(resume, {"model": denoiser.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema else {},
                                    "generator": generator.get_state(), "losses": losses, "running": running,
                                    "step": step + 1})
            distributed.barrier()
        if stop:  # torchrun forwards SIGTERM to every rank, so all ranks stop at the same step
            raise Preempted(f"{context}: SIGTERM, stopped after step {step + 1}/{until}; resume state saved "
                            f"to {resume}, a rerun continues from it")
    if running:
        losses.append(sum(running) / len(running))
    denoiser.eval()
    for name, p in denoiser.named_parameters():
        if not torch.isfinite(p).all():
            raise NumericalError(f"{context}: non-finite weights in {name} after training")
    return {"loss": losses, "steps": until, "ema": ema, "seconds": time.perf_counter() - begin,
            "resumed_from": start_step if start_step != first_step else 0,
            "state": {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "ema": ema.state_dict() if ema is not None else {}, "step": until}}


def em_mstep(net: torch.nn.Module, x: torch.Tensor, schedule: Schedule, mstep: dict[str, Any],
             generator: torch.Generator, context: str = "M-step",
             resume_path: str | Path | None = None,
             loss_fn: Callable[..., torch.Tensor] | None = None,
             precision: Precision | None = None) -> dict[str, Any]:
    """The M-step of Algorithm 1 on posterior samples x: leave out samples outside ``mstep.max_abs``,
    train ``net`` from its current weights (``loss_fn``, ``precision``: see :func:`train_denoiser`), then
    put the EMA weights (if any) into ``net``.

    Returns :func:`train_denoiser`'s record plus ``raw`` (the trained weights before the EMA copy: the
    next iteration starts from them), ``dropped`` and ``n_data``."""
    x, dropped = within_box(x, mstep.get("max_abs"), context)
    result = train_denoiser(net, x, schedule, mstep, generator, resume_path=resume_path, context=context,
                            loss_fn=loss_fn, precision=precision)
    raw = {k: v.clone() for k, v in net.state_dict().items()}
    if result["ema"] is not None:
        result["ema"].copy_to(net)
    return {**result, "raw": raw, "dropped": dropped, "n_data": len(x)}
