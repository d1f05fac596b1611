"""What one Snakemake job knows about itself: the config, which experiment / variant / iteration it
is for, the device it computes on, the numerical precision of its network and how it stores arrays
(each chosen once, here)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emprior.core import sections
from emprior.core.precision import Precision
from emprior.core.provenance import make_provenance
from emprior.core.storage import Storage, storage_of
from emprior.core.rng import derive_seed, torch_generator

if TYPE_CHECKING:
    import torch


@dataclass
class Job:
    config: dict[str, Any]
    experiment: str | None = None
    variant: str | None = None
    iteration: int | None = None

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def exp(self) -> dict[str, Any]:
        return sections.experiment(self.config, self.experiment)

    @property
    def var(self) -> dict[str, Any]:
        return sections.variant(self.config, self.experiment, self.variant)

    @functools.cached_property
    def device(self) -> torch.device:
        from emprior.core.device import select_device

        device = select_device(self.config.get("device", "auto"))
        self.precision.apply(device)  # TF32 is process-wide: set with the device, once
        if device.type == "cuda":
            from emprior.core.reproducibility import settings

            if settings(self.config)["cuda_deterministic"]:
                import torch

                torch.use_deterministic_algorithms(True)
                torch.backends.cudnn.benchmark = False
        return device

    @functools.cached_property
    def precision(self) -> Precision:
        """The config section ``precision`` (:mod:`emprior.core.precision`; defaults when absent)."""
        return Precision.from_config(self.config)

    @functools.cached_property
    def storage(self) -> Storage:
        """The config section ``storage``: how the job's HDF5 arrays are written (:mod:`emprior.core.storage`)."""
        return storage_of(self.config)

    @property
    def context(self) -> str:
        """``experiment/variant iteration k`` for log lines and error messages."""
        where = "/".join(p for p in (self.experiment, self.variant) if p)
        return f"{where} iteration {self.iteration}" if self.iteration is not None else where

    def stream(self, *keys: object) -> tuple[object, ...]:
        """The seed path of a random stream of this job: (experiment, variant, iteration, *keys)."""
        head = [k for k in (self.experiment, self.variant) if k is not None]
        if self.iteration is not None:
            head.append(self.iteration)
        return (*head, *keys)

    def derive_seed(self, *keys: object) -> int:
        return derive_seed(self.seed, *self.stream(*keys))

    def generator(self, *keys: object) -> torch.Generator:
        """A generator on the job's device for the stream ``keys``."""
        return torch_generator(self.seed, *self.stream(*keys), device=self.device)

    def provenance(self, rule: str, **extra: Any) -> dict[str, Any]:
        ids = {k: v for k, v in (("experiment", self.experiment), ("variant", self.variant),
                                 ("iteration", self.iteration)) if v is not None}
        return make_provenance(self.config, self.seed, rule, **ids, precision=self.precision.record(), **extra)
