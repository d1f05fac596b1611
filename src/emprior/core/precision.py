"""The numerical precision of a job's network, from the config section ``precision`` (all keys
optional; the defaults change no number of a CPU run):

- ``autocast: none | bf16``: the denoiser's forward runs under ``torch.autocast`` in bfloat16 (matmuls
  and convolutions in bf16, reductions and normalisations as autocast keeps them), and its output is
  cast back to the input's dtype. It covers the network only: the DSM loss, the optimiser, and the
  MMPS solve (CG/GMRES, its dot products, ``y - A x_hat``) see float32 tensors. The VJPs J^T u of the
  posterior samplers differentiate through the autocast graph, so their backward matmuls run in bf16
  too; the gradient they return has the input's dtype.
- ``tf32: true | false`` (default true): float32 matmuls and cuDNN convolutions on CUDA may use TF32
  tensor cores (10-bit mantissa inputs, float32 accumulation). Set once per job, when its device is
  chosen (:attr:`emprior.core.job.Job.device`); no effect on a CPU job.
- ``compile: false | true`` (default false): the denoiser is wrapped by ``torch.compile``. Off until
  measured faster on the paper's nets (docs/precision.md).

The switches act where the suite calls a network: the M-step's loss
(:func:`emprior.training.mstep.train_denoiser`, which the peers' M-steps use too) and a loaded prior's
networks (:func:`emprior.priors.checkpoint.prior_from_checkpoint` for its denoiser,
:meth:`~emprior.priors.checkpoint.Prior.run` for DiffEM's conditional and Ambient's network), which the
E-step's posterior samplers, the prior samples and the E-step check call. The defaults return the
network object itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from emprior.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

AUTOCAST: tuple[str, ...] = ("none", "bf16")


@dataclass(frozen=True)
class Precision:
    autocast: str = "none"
    tf32: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST:
            raise ConfigError(f"precision.autocast: must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")
        for key in ("tf32", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"precision.{key}: must be true or false, got {getattr(self, key)!r}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Precision:
        """The ``precision`` section of a (validated) config; absent keys take the defaults."""
        section = config.get("precision") or {}
        unknown = sorted(set(section) - {"autocast", "tf32", "compile"})
        if unknown:
            raise ConfigError(f"precision: unknown key {unknown[0]!r} (allowed: autocast, compile, tf32)")
        return cls(**section)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for ``autocast: none``."""
        import torch

        return torch.bfloat16 if self.autocast == "bf16" else None

    def record(self) -> dict[str, Any]:
        """For provenance."""
        return asdict(self)

    def apply(self, device: torch.device) -> None:
        """The process-wide part (TF32), for a job on ``device``; nothing on a CPU."""
        import torch

        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32

    def compiled(self, module: Any) -> Any:
        """``torch.compile(module)`` under ``compile: true``, else ``module`` itself. The compiled
        module shares the parameters, so training it trains ``module``."""
        if not self.compile:
            return module
        import torch

        return torch.compile(module)

    def autocast_of(self, denoiser: Any) -> Any:
        """``denoiser`` under autocast (:class:`~emprior.nets.wrappers.Autocast`), or ``denoiser`` itself
        for ``none``."""
        if self.dtype is None:
            return denoiser
        from emprior.nets.wrappers import Autocast

        return Autocast(denoiser, self.dtype)

    def wrap(self, denoiser: Any) -> Any:
        """The denoiser as the job calls it: compiled (if on), then under autocast (if on)."""
        return self.autocast_of(self.compiled(denoiser))
