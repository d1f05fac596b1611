"""model.pt: the prior q_k of an EM iteration, either the Gaussian q_0 or a trained denoiser.

Checkpoint layout (a dict of tensors, numbers and strings, loadable with ``weights_only=True``):

- Gaussian (iteration 0): ``kind="gaussian"``, ``x_shape``, ``mean``, ``U``, ``s``, ``tau``,
  ``log_evidence`` (per Gaussian-EM iteration).
- Denoiser (iterations >= 1): ``kind="denoiser"``, ``x_shape``, ``net`` (the net config), ``schedule``
  ({sigma_min, sigma_max}), ``weights`` (the state dict used for sampling: EMA weights if EMA is on),
  ``raw_weights`` (the optimiser's weights, where the next M-step starts), ``train`` (loss curve and
  step count).
- A method's own model (e.g. AmbientDiffusion's ``kind="ambient"``): ``method`` names the EM method
  that wrote it (older files: the kind), and that method's
  :meth:`~emprior.methods.base.EMMethod.build_networks` builds the module the ``weights`` go into; it is
  sampled through the method's ``sample_prior`` (the Prior's own ``denoiser`` raises). This module
  never imports a method: it finds it by name in the plug-in registry when such a file is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from emprior.core.artifacts import load_torch
from emprior.core.errors import ArtifactError
from emprior.core.precision import Precision


@dataclass
class Prior:
    """A loaded q_k: ``denoiser(x_t, sigma) -> E[x | x_t]`` plus, for q_0, the Gaussian itself."""

    kind: str
    x_shape: tuple[int, ...]
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    checkpoint: dict[str, Any]
    gaussian: Any = None      # emprior.priors.gaussian.LowRankGaussian for kind == "gaussian"
    module: Any = None        # the PreconditionedDenoiser ("denoiser") or AmbientDenoiser ("ambient")
    precision: Precision | None = None  # how the job runs its networks (emprior.core.precision)

    def run(self, module: Any) -> Any:
        """``module`` (a network of this checkpoint: the prior's, DiffEM's conditional, Ambient's) as the
        job's ``precision`` runs it (autocast / compile; without one, the module itself)."""
        return module if self.precision is None else self.precision.wrap(module)

    def sample(self, n: int, exp_cfg: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """n samples of q_k as the evaluation draws them: exactly for the Gaussian q_0, else by reverse
        diffusion (Algorithm 2) from x_T ~ N(0, sigma_max^2 I) with the ``evaluate`` sampler settings."""
        if self.kind == "gaussian":
            return self.gaussian.sample(n, generator)
        from emprior.diffusion.samplers import sample_prior
        from emprior.diffusion.schedule import Schedule

        ev = exp_cfg["evaluate"]
        return sample_prior(self.denoiser, n, self.x_shape, Schedule(**exp_cfg["schedule"]), ev["steps"],
                            ev["sampler"], generator, corrections=ev.get("corrections", 0), tau=ev.get("tau", 0.1),
                            eta=ev.get("eta", 1.0), rho=ev.get("rho", 7.0))

    def sample_from(self, x_T: torch.Tensor, exp_cfg: dict[str, Any],
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples of q_k by reverse diffusion from the given initial noise ``x_T`` (n, *x_shape), at
        sigma_max, with the ``evaluate`` sampler settings; the Gaussian q_0 too, through its exact
        denoiser. With a deterministic sampler (DDIM, eta 0) the same x_T maps to comparable samples
        of every q_k (Fig. 5). ``x_T`` is moved to the prior's device and dtype."""
        from emprior.diffusion.samplers import sample
        from emprior.diffusion.schedule import Schedule

        if self.gaussian is not None:
            like = self.gaussian.mean
        else:
            like = next(iter(self.module.parameters()), None) if self.module is not None else None
        if like is not None:
            x_T = x_T.to(device=like.device, dtype=like.dtype)
        ev = exp_cfg["evaluate"]
        return sample(self.denoiser, x_T, Schedule(**exp_cfg["schedule"]), ev["steps"], ev["sampler"],
                      corrections=ev.get("corrections", 0), tau=ev.get("tau", 0.1), eta=ev.get("eta", 1.0),
                      rho=ev.get("rho", 7.0), generator=generator)


def gaussian_checkpoint(result, x_shape) -> dict[str, Any]:
    return {"kind": "gaussian", "x_shape": list(x_shape), "mean": result.mean.float(), "U": result.U.float(),
            "s": result.s.float(), "tau": float(result.tau), "log_evidence": list(result.log_evidence)}


def load_prior(path: str | Path, rule: str | None = None, device: torch.device | str | None = None,
               precision: Precision | None = None) -> Prior:
    """model.pt (checksum verified) as a :class:`Prior` on ``device`` (default: the CPU)."""
    return prior_from_checkpoint(load_torch(path, rule=rule), str(path), device, precision)


def prior_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint",
                          device: torch.device | str | None = None, precision: Precision | None = None) -> Prior:
    """A checkpoint dict (as model.pt holds it) as a :class:`Prior` on ``device``. A trained denoiser's
    ``Prior.denoiser`` is the network as ``precision`` runs it (autocast / compile,
    :mod:`emprior.core.precision`; default: the module itself); ``Prior.module`` is the module, and
    :meth:`Prior.run` applies the same ``precision`` to the checkpoint's other networks."""
    from emprior.nets import build_denoiser
    from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian

    kind = ckpt.get("kind")
    x_shape = tuple(int(k) for k in ckpt.get("x_shape", ()))
    if kind == "gaussian":
        g = LowRankGaussian(mean=ckpt["mean"], U=ckpt["U"], s=ckpt["s"], tau=float(ckpt["tau"]),
                            event_shape=x_shape)
        if device is not None:
            g = g.to(device=device)
        return Prior(kind, x_shape, GaussianDenoiser(g), ckpt, gaussian=g, precision=precision)
    if kind == "denoiser":
        # its random initialisation is overwritten: draw it off the global stream, which the caller's
        # training (dropout) may be using
        with torch.random.fork_rng(devices=[]):
            module = build_denoiser(dict(ckpt["net"]), x_shape)
        try:
            module.load_state_dict(ckpt["weights"])
        except RuntimeError as exc:
            raise ArtifactError(f"{where}: weights do not match the net config "
                                f"({str(exc).splitlines()[0]})") from None
        module.eval()
        if device is not None:
            module.to(device)
        for p in module.parameters():
            p.requires_grad_(False)
        return Prior(kind, x_shape, module if precision is None else precision.wrap(module), ckpt, module=module,
                     precision=precision)
    if not isinstance(kind, str):
        raise ArtifactError(f"{where}: unknown model kind {kind!r} (expected 'gaussian', 'denoiser' or the kind "
                            "of an EM method's own model)")
    # Any other kind is a method's own model: the method that wrote it (recorded under "method", older
    # files: the kind) builds its networks. Looked up by name through the plug-in registry at call time,
    # so this module imports nothing above ``priors``.
    import importlib

    methods = importlib.import_module("emprior.methods").EM_METHODS
    name = ckpt.get("method", kind)
    if name not in methods:
        raise ArtifactError(f"{where}: unknown model kind {kind!r} (written by method {name!r}, which is not a "
                            f"registered EM method: {', '.join(methods.names())})")
    with torch.random.fork_rng(devices=[]):
        module = methods.get(name).build_networks(ckpt, where)
    load_module(module, ckpt["weights"], where, device)

    def needs_method(x_t, sigma):
        raise ArtifactError(f"{where}: a {kind!r} model is sampled through its method's sample_prior "
                            f"(EM method {name!r}), not as a plain denoiser")

    return Prior(kind, x_shape, needs_method, ckpt, module=module, precision=precision)


def load_module(module: torch.nn.Module, weights: dict[str, Any], where: str, device=None) -> None:
    """Put ``weights`` into ``module`` (one-line ArtifactError if they do not fit), for inference on ``device``."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        raise ArtifactError(f"{where}: weights do not match the net config ({str(exc).splitlines()[0]})") from None
    module.eval()
    if device is not None:
        module.to(device)
    for p in module.parameters():
        p.requires_grad_(False)
