"""Several processes of one job (``torchrun --standalone --nproc-per-node N``): who this process is.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in every worker's environment. A job is
*distributed* when ``WORLD_SIZE`` > 1; otherwise (plain ``python -m emprior``, or torchrun with one
process) nothing here does anything and the single-process code paths run unchanged.

Only the M-step runs this way (``mstep.gpus``: :func:`emprior.training.mstep.train_denoiser` wraps the
network in DistributedDataParallel). Rank 0 alone writes files; the process group is created the
first time training needs it (NCCL for CUDA devices, gloo for the CPU) and ended by :func:`shutdown`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """True in a worker of a multi-process (torchrun) job."""
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """The process that writes artifacts: rank 0 (the only process of a single-process job)."""
    return rank() == 0


def setup(device: torch.device) -> None:
    """Join the job's process group (once): NCCL when ``device`` is a CUDA device, else gloo."""
    import torch
    import torch.distributed as dist

    if not active() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def barrier() -> None:
    import torch.distributed as dist

    if active() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
