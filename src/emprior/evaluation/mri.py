"""Held-out accelerated-MRI reconstructions with a learned prior (paper Sec. 5.3, Figs. 6 and 14, and the
PSNR / SSIM table): posterior samples x ~ q_K(x | y) for held-out images observed at several
accelerations R (k-space columns, the experiment's ``fourier_lines`` operator with R replaced) and under a
centred crop, beside the zero-filled inverse A^T y.

The ``mri`` config section names the experiment and variant (its final model and its E-step posterior
sampler: MMPS with CG, the E-step's diffusion sampler and steps), the held-out data set (a dataset
mapping: phantoms after the training ones, or fastMRI's validation volumes), the accelerations, how many
held-out images and posterior samples per image, and the crop side. Operators and noise of R are drawn
from the stream (seed, experiment, "mri", "R<R>"), the samples from (..., "mri", "posterior", "R<R>"),
so adding an R changes no other row.

Quality (``psnr_ssim``): images mapped from [-2, 2] to [0, 1] (x + 2) / 4 and clipped, then
scikit-image's PSNR and SSIM (data_range 1) of the posterior mean (mean of the samples) and of the
zero-filled inverse against the truth, averaged over the held-out images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from emprior.core.errors import ConfigError

DEFAULTS = {"accelerations": [4, 6, 8, 16, 32], "observations": 4, "samples": 2}


def mri_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The ``mri`` section with its defaults, checked (one-line ConfigErrors)."""
    section = config.get("mri")
    if not isinstance(section, dict):
        raise ConfigError("mri: the MRI figures need an 'mri' section (experiment, variant, heldout)")
    s = {**DEFAULTS, **section}
    exp = config.get("experiments", {}).get(s.get("experiment"))
    if exp is None:
        raise ConfigError(f"mri.experiment: {s.get('experiment')!r} is not an experiment of the config")
    if s.get("variant") not in exp["variants"]:
        raise ConfigError(f"mri.variant: {s.get('variant')!r} is not a variant of experiment {s['experiment']!r}")
    for key in ("heldout", "crop"):
        if key not in s:
            raise ConfigError(f"mri.{key}: required (held-out dataset mapping; side of the centred crop of Fig. 14)")
    if exp["observation"]["operator"] != "fourier_lines":
        raise ConfigError(f"mri.experiment: {s['experiment']!r} observes with "
                          f"{exp['observation']['operator']!r}, not fourier_lines")
    return s


def to_unit(x: np.ndarray) -> np.ndarray:
    """[-2, 2] -> [0, 1], clipped (the official images' range, then the metrics' data range 1)."""
    return np.clip((np.asarray(x, dtype=np.float64) + 2.0) / 4.0, 0.0, 1.0)


def psnr_ssim(truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of (N, 1, H, W) estimates against the truth, on [0, 1] (scikit-image)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    t, e = to_unit(truth), to_unit(estimate)
    psnr = [peak_signal_noise_ratio(a[0], b[0], data_range=1.0) for a, b in zip(t, e)]
    ssim = [structural_similarity(a[0], b[0], data_range=1.0) for a, b in zip(t, e)]
    return float(np.mean(psnr)), float(np.mean(ssim))


def reconstruct(job: Any, prior: Any, x: np.ndarray, obs_cfg: dict[str, Any], tag: str, samples: int
                ) -> dict[str, np.ndarray]:
    """Observe the held-out ``x`` with ``obs_cfg`` (operator and noise drawn from the stream ``tag``) and
    draw ``samples`` posterior samples per image with the variant's E-step posterior and sampler.
    Returns y, the zero-filled inverse A^T y (N, 1, H, W), the samples (N, S, 1, H, W) and the residual
    ratios ||y - A x||^2 / (m Sigma_y) (N, S)."""
    from emprior.data.observations import corrupt
    from emprior.diffusion.samplers import sample
    from emprior.diffusion.schedule import Schedule
    from emprior.methods.estep import residual_ratio
    from emprior.pipeline.em import method_of

    obs = corrupt(x, obs_cfg, job.seed, f"{job.experiment}/mri/{tag}")
    est = job.exp["estep"]
    schedule = Schedule(**job.exp["schedule"])
    n = len(x)
    rows = np.tile(np.arange(n), samples)  # sample s of image i at row s * n + i
    op = obs.op[rows] if len(obs.op) > 1 else obs.op
    y = obs.y[rows].to(job.device)
    post = method_of(job).posterior(prior, op, y)
    gen = job.generator("mri", "posterior", tag)
    x_T = schedule.sigma_max * torch.randn((len(rows), *obs.x_shape), generator=gen, device=job.device)
    xs = sample(post, x_T, schedule, est["steps"], est["sampler"], corrections=est.get("corrections", 0),
                tau=est.get("tau", 0.1), eta=est.get("eta", 1.0), generator=gen)
    ratio = residual_ratio(op, y, xs).float().cpu().numpy().reshape(samples, n).T
    xs = xs.float().cpu().numpy().reshape(samples, n, *obs.x_shape).swapaxes(0, 1)
    zero_filled = obs.op.At(obs.y).float().numpy()
    return {"y": obs.y.float().numpy(), "zero_filled": zero_filled, "samples": xs, "residual_ratio": ratio}


def heldout_reconstructions(job: Any, model: str, settings: dict[str, Any]
                            ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """(held-out truth, {tag: reconstruct(...)}) for every acceleration (tags ``R4``, ...) and the crop
    (tag ``crop``, if ``settings['crop']``)."""
    from emprior.data import load_dataset
    from emprior.priors.checkpoint import load_prior

    x = load_dataset(settings["heldout"], job.seed)[: int(settings["observations"])]
    if x.shape[1:] != tuple(job_x_shape(job)):
        raise ConfigError(f"mri.heldout: images of shape {x.shape[1:]} do not match experiment "
                          f"{job.experiment!r} ({tuple(job_x_shape(job))})")
    prior = load_prior(model, device=job.device, precision=job.precision)
    obs_cfg = job.exp["observation"]
    out = {}
    for R in settings["accelerations"]:
        cfg = {**obs_cfg, "options": {**obs_cfg.get("options", {}), "acceleration": float(R)}}
        out[f"R{R:g}"] = reconstruct(job, prior, x, cfg, f"R{R:g}", int(settings["samples"]))
    if settings["crop"]:
        c = int(settings["crop"])
        cfg = {"operator": "crop", "options": {"h": c, "w": c}, "noise_std": obs_cfg["noise_std"]}
        out["crop"] = reconstruct(job, prior, x, cfg, "crop", int(settings["samples"]))
    return x, out


def job_x_shape(job: Any) -> tuple[int, ...]:
    from emprior.data import dataset_shape

    return tuple(dataset_shape(job.exp["dataset"], job.seed)[1:])


def quality_rows(truth: np.ndarray, recon: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per acceleration: PSNR / SSIM of the posterior mean and of the zero-filled inverse, and
    the mean residual ratio of the posterior samples."""
    rows = []
    for tag, r in recon.items():
        if not tag.startswith("R"):
            continue
        p_psnr, p_ssim = psnr_ssim(truth, r["samples"].mean(axis=1))
        z_psnr, z_ssim = psnr_ssim(truth, r["zero_filled"])
        rows.append({"R": float(tag[1:]), "images": len(truth), "samples": r["samples"].shape[1],
                     "psnr_posterior_mean": p_psnr, "ssim_posterior_mean": p_ssim,
                     "psnr_zero_filled": z_psnr, "ssim_zero_filled": z_ssim,
                     "residual_ratio": float(np.mean(r["residual_ratio"]))})
    return rows
