"""The device a job computes on, chosen once per job from the config key ``device``.

``auto`` is CUDA when it is available, else the CPU; ``cuda`` without a GPU is a one-line error (a job
that silently fell back to the CPU would take days at paper scale). In a worker of a multi-process
job (torchrun, :mod:`emprior.core.distributed`) ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``: one GPU
per process; ``cpu`` keeps every worker on the CPU (gloo). Models, tensors and random
generators are made on this device; artifacts are always written from CPU tensors
(:mod:`emprior.core.artifacts`), so a file's bytes do not depend on where it was computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emprior.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def select_device(name: str | None = "auto") -> torch.device:
    """``auto | cpu | cuda`` (or ``cuda:N``) -> torch.device."""
    import torch

    from emprior.core import distributed

    name = "auto" if name is None else str(name)
    if distributed.active() and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} asked for, but torch sees no CUDA device "
                              f"(torch {torch.__version__}; use device: auto or cpu)")
        return torch.device(name)
    raise ConfigError(f"device: must be one of {', '.join(CHOICES)} (or cuda:N), got {name!r}")
