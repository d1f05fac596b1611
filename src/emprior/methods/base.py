"""The EM-method protocol (Algorithm 1 and its peers) and the registry of methods.

A method is one class registered with :data:`EM_METHODS` together with its options dataclass. It
declares its ``stages``, a subset of

- ``init``: the initial prior q_0 (``iter_000/model.pt``), e.g. DiEM's Gaussian fitted by EM;
- ``estep``: posterior samples x ~ q_{k-1}(x | y, A) for every observation (``iter_k/posterior.h5``),
  drawn with any registered posterior sampler and diffusion sampler;
- ``mstep``: the prior q_k (``iter_k/model.pt``) trained on the E-step's samples (or, for a method
  without an E-step, on the observations themselves),

and owns each stage it declares. ``rules/em.smk`` builds the jobs from the stages: a method without
an E-step gets no E-step jobs, one without ``init`` starts at iteration 1 from nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emprior.core.registry import Registry

if TYPE_CHECKING:
    import torch

    from emprior.core.job import Job
    from emprior.data.observations import Observations
    from emprior.priors.checkpoint import Prior

STAGES = ("init", "estep", "mstep")

EM_METHODS: Registry[type[EMMethod]] = Registry("EM method", "method")


class EMMethod:
    """Base class of EM methods. Subclasses set ``stages`` and implement the stages they declare.

    ``options`` is the method's options dataclass filled from the variant's config, ``exp`` the
    experiment's config (dataset, observation, schedule, denoiser, estep, mstep, evaluate)."""

    stages: ClassVar[tuple[str, ...]] = STAGES
    # iteration 1's E-step can be scored against the exact posterior under a Gaussian q_0
    estep_check: ClassVar[bool] = False
    # the init stage reads clean.h5 too (a method that starts from clean data, e.g. EMDiffusion)
    init_needs_clean: ClassVar[bool] = False
    # a final stage after the last iteration (<variant>/final/: E-step with the last model, a model
    # trained on those samples, its prior samples and metrics.json), which Table 1 evaluates; e.g.
    # DiffEM's fresh unconditional model on the last conditional model's reconstructions
    final_stage: ClassVar[bool] = False
    # the method's name in Table 1 and the paper tables (diem-arxiv Table 1, the peers' papers)
    label: ClassVar[str] = ""

    def __init__(self, options: Any, exp: dict[str, Any]):
        self.options = options
        self.exp = exp

    # -- stage: init ---------------------------------------------------------------------------
    def init_prior(self, job: Job, obs: Observations, clean: np.ndarray | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        """q_0 as a model.pt checkpoint dict, and run-dependent numbers for the sidecar; ``clean`` (the
        clean data set) is given only to a method with ``init_needs_clean``."""
        raise NotImplementedError(f"{type(self).__name__} has no init stage")

    # -- stage: estep --------------------------------------------------------------------------
    def estep_subset(self, job: Job, n: int) -> np.ndarray | None:
        """Indices of the observations iteration ``job.iteration``'s E-step samples (None: all n)."""
        return None

    def posterior(self, prior: Prior, op: Any, y: torch.Tensor) -> Any:
        """The posterior denoiser E[x | x_t, y] the E-step samples with, for one block of observations."""
        raise NotImplementedError(f"{type(self).__name__} has no E-step")

    def estep_chain(self, schedule: Any, est: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The noise levels (an object with ``discretize(steps)`` and ``sigma_max``, e.g. the experiment's
        :class:`~emprior.diffusion.schedule.Schedule`) and ``estep`` settings the E-step samples with.
        Default: the experiment's own."""
        return schedule, est

    # -- stage: mstep --------------------------------------------------------------------------
    def uses_previous(self, iteration: int) -> bool:
        """Whether iteration ``iteration``'s M-step starts from iter_{k-1}/model.pt."""
        return iteration >= 2

    def mstep(self, job: Job, data: torch.Tensor, previous: Prior | None, obs: Observations | None,
              resume_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """q_k as a model.pt checkpoint dict (and sidecar numbers), trained on ``data``: the gathered
        posterior samples, or the observations' y for a method without an E-step (``obs`` is given then)."""
        raise NotImplementedError(f"{type(self).__name__} has no M-step")

    def final_model(self, job: Job, data: torch.Tensor, source: dict[str, Any], resume_path: str
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The final stage's model.pt (``final_stage`` only), trained on ``data``: the samples that the
        last iteration's model drew for the observations (``source``: their paths and checksums)."""
        raise NotImplementedError(f"{type(self).__name__} has no final stage")

    # -- evaluation ----------------------------------------------------------------------------
    def sample_prior(self, job: Job, prior: Prior, n: int, generator: torch.Generator,
                     x_T: torch.Tensor | None = None) -> torch.Tensor:
        """n samples of q_k as the evaluation draws them (the ``evaluate`` sampler settings); from the
        given initial noise ``x_T`` (n, *x_shape) instead of one drawn with ``generator`` when it is
        given (Fig. 5: the same noise for every variant and iteration, then also for the Gaussian q_0)."""
        if x_T is not None:
            return prior.sample_from(x_T, self.exp, generator)
        return prior.sample(n, self.exp, generator)

    def validate(self, where: str) -> None:
        """Check option combinations a schema cannot express; one-line ConfigError naming the key."""

    @classmethod
    def build_networks(cls, ckpt: dict[str, Any], where: str) -> torch.nn.Module:
        """The (untrained) module whose state dict is ``ckpt["weights"]``, for a model.pt of this method's
        own kind (:func:`emprior.priors.checkpoint.prior_from_checkpoint` asks the method recorded in the
        file). Methods that write the plain ``denoiser`` / ``gaussian`` kinds never get asked."""
        from emprior.core.errors import ArtifactError

        raise ArtifactError(f"{where}: EM method {cls.__name__} does not write models of kind {ckpt.get('kind')!r}")

    def checkpoint_networks(self, x_shape: tuple[int, ...], op: Any) -> list[torch.nn.Module]:
        """The networks whose weights an M-step's model.pt holds, each twice (EMA and raw weights), for
        ``disk-plan`` (:mod:`emprior.report.disk` builds them on the meta device); ``op`` is the
        observation operator of one observation. Default: the experiment's denoiser."""
        from emprior.nets import build_denoiser

        return [build_denoiser(dict(self.exp["denoiser"]), x_shape)]

    # -- report --------------------------------------------------------------------------------
    def table_covariance(self) -> str | None:
        """The E-step covariance as Table 1 names it (DiEM's ablation), or None."""
        return None

    def clean_data(self) -> int:
        """How many clean training examples the method sees (Table 1 counts them)."""
        return 0


def make_method(variant_cfg: dict[str, Any], exp_cfg: dict[str, Any], where: str = "variant") -> EMMethod:
    """The registered method ``variant_cfg["method"]`` with its options from the variant's config."""
    name = variant_cfg.get("method")
    cls = EM_METHODS.get(name, where=f"{where}.method")
    method = cls(EM_METHODS.options(name, variant_cfg, where=where), exp_cfg)
    method.validate(where)
    return method
