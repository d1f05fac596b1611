"""Image figures of the EM iterations: Fig. 5 (deterministic samples of q_k from the same noise) and the
posterior samples along iterations beside the observations (Figs. 8-10).

Images are (C, H, W) arrays in the data's own range; they are shown on a symmetric range [-lim, lim]
taken from the clean data, so that 0 (an unmeasured pixel of a masked observation) is mid-gray.
"""

from __future__ import annotations

import copy
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from emprior.core.artifacts import save_figure
from emprior.core.errors import ArtifactError, ConfigError

FIG5_SAMPLES = 8            # figures.fig5_samples
POSTERIOR_OBSERVATIONS = 6  # figures.posterior_observations
CELL_INCHES = 0.45          # one image in a grid


def figure_option(config: dict[str, Any], key: str) -> int:
    """An option of the ``figures`` config section, with its default."""
    defaults = {"fig5_samples": FIG5_SAMPLES, "posterior_observations": POSTERIOR_OBSERVATIONS}
    return int((config.get("figures") or {}).get(key, defaults[key]))


def run_of(path: str | Path, variants: list[str]) -> tuple[str, int]:
    """(variant, iteration) of a run's file ``<results>/<experiment>/<variant>/iter_<k>/<name>``."""
    p = Path(path)
    m = re.fullmatch(r"iter_(\d+)", p.parent.name)
    variant = p.parent.parent.name
    if m is None or variant not in variants:
        raise ArtifactError(f"{path}: expected <experiment>/<variant>/iter_<k>/{p.name} with a variant of "
                            f"this experiment ({', '.join(variants)})")
    return variant, int(m.group(1))


def sorted_runs(paths: list[str], variants: list[str]) -> list[tuple[tuple[str, int], str]]:
    """((variant, k), path) of run files, variants in the order they first appear in ``paths`` (the
    rules list them in the config's order; a job's config file has its keys sorted), then by k."""
    runs = [(run_of(p, variants), p) for p in paths]
    first = {v: i for i, v in enumerate(dict.fromkeys(v for (v, _), _ in runs))}
    return sorted(runs, key=lambda r: (first[r[0][0]], r[0][1]))


def display_range(clean: np.ndarray) -> float:
    """Half-width of the symmetric display range [-lim, lim] of the clean images."""
    lim = float(np.quantile(np.abs(clean), 0.999)) if clean.size else 1.0
    return lim if lim > 0 else 1.0


def to_display(x: np.ndarray, lim: float) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W) grayscale (one channel; several other than 3: their magnitude) or
    (N, H, W, 3) RGB, in [0, 1] with 0 -> 0.5."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ConfigError(f"figures: expected images (N, C, H, W), got shape {x.shape}")
    if x.shape[1] == 3:
        img = np.moveaxis(x, 1, -1)
    elif x.shape[1] == 1:
        img = x[:, 0]
    else:
        img = np.sqrt((x**2).sum(1))
    return np.clip(0.5 + img / (2 * lim), 0.0, 1.0)


def mosaic(cells: list[list[np.ndarray | None]], like: np.ndarray, pad: int = 1) -> np.ndarray:
    """Tile a rows x cols grid of display images shaped like ``like`` (None: a blank cell) into one
    image with white gaps."""
    h, w = like.shape[:2]
    rows, cols = len(cells), max(len(r) for r in cells)
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, *like.shape[2:]))
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            if c is not None:
                out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = c
    return out


def _show(ax: Any, cells: list[list[np.ndarray | None]], like: np.ndarray, title: str,
          row_labels: list[str] | None = None, col_labels: list[str] | None = None) -> None:
    img = mosaic(cells, like)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    h, w = like.shape[:2]
    ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(len(col_labels or []))], col_labels or [],
                  fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(len(row_labels or []))], row_labels or [],
                  fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)


def _suptitle(fig: Any, text: str) -> None:
    fig.suptitle(textwrap.fill(text, width=max(40, int(fig.get_figwidth() * 14))), fontsize=9)


# -- Fig. 5 ------------------------------------------------------------------------------------------

def fig5_samples(job: Any, models: list[str], n: int) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """x_T and, per variant and iteration, n samples of q_k (``iter_k/model.pt`` in ``models``) drawn
    by deterministic DDIM (eta 0, ``evaluate.steps`` steps) through the variant's method from the same
    x_T ~ N(0, sigma_max^2 I), drawn once from the stream (seed, experiment, "fig5") on the CPU."""
    import torch

    from emprior.core.job import Job
    from emprior.core.rng import torch_generator
    from emprior.diffusion.schedule import Schedule
    from emprior.methods import make_method
    from emprior.priors.checkpoint import load_prior

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"figures.fig5_samples: must be a positive integer, got {n!r}")
    name = job.experiment
    exp = copy.deepcopy(job.exp)
    exp["evaluate"] = {**exp["evaluate"], "sampler": "ddim", "eta": 0.0}
    config = copy.deepcopy(job.config)
    config["experiments"][name] = exp  # the methods and their jobs see the DDIM settings
    runs = sorted_runs(models, list(exp["variants"]))
    x_T = None
    out: dict[str, dict[int, np.ndarray]] = {}
    for (variant, k), path in runs:
        prior = load_prior(path, device=job.device, precision=job.precision)
        if len(prior.x_shape) != 3:
            raise ConfigError(f"experiments.{name}: fig5 shows images (C, H, W); q_k has samples of shape "
                              f"{prior.x_shape}")
        if x_T is None:
            g = torch_generator(job.seed, name, "fig5")
            x_T = Schedule(**exp["schedule"]).sigma_max * torch.randn((n, *prior.x_shape), generator=g)
        elif tuple(x_T.shape[1:]) != tuple(prior.x_shape):
            raise ArtifactError(f"{path}: prior of shape {prior.x_shape}, the others {tuple(x_T.shape[1:])}")
        method = make_method(exp["variants"][variant], exp, where=f"experiments.{name}.variants.{variant}")
        vjob = Job(config, name, variant, k)
        # a fresh generator per model: a method that draws more than x_T (Ambient's masks) draws the same
        gen = torch_generator(job.seed, name, "fig5", "sampler", device=job.device)
        x = method.sample_prior(vjob, prior, n, gen, x_T=x_T)
        out.setdefault(variant, {})[k] = x.float().cpu().numpy()
    if x_T is None:
        raise ArtifactError(f"fig5 {name}: no model.pt given")
    return x_T.numpy(), out


def fig5_figure(samples: dict[str, dict[int, np.ndarray]], labels: dict[str, str], lim: float, out: str,
                provenance: dict[str, Any], title: str) -> None:
    """Rows = EM iterations k, columns = samples from the same x_T, one block per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iters = sorted({k for by_k in samples.values() for k in by_k})
    n = max(x.shape[0] for by_k in samples.values() for x in by_k.values())
    variants = list(samples)
    bcols = min(len(variants), 3)
    brows = -(-len(variants) // bcols)
    fig, axes = plt.subplots(brows, bcols, squeeze=False,
                             figsize=(bcols * (n * CELL_INCHES + 0.7), brows * (len(iters) * CELL_INCHES + 0.8)))
    for ax in axes.flat[len(variants):]:
        ax.axis("off")
    for ax, v in zip(axes.flat, variants):
        disp = {k: to_display(x, lim) for k, x in samples[v].items()}
        cells = [[disp[k][j] if k in disp and j < len(disp[k]) else None for j in range(n)] for k in iters]
        _show(ax, cells, next(iter(disp.values()))[0], labels.get(v, v), row_labels=[f"q_{k}" for k in iters])
    _suptitle(fig, title)
    fig.tight_layout()
    save_figure(out, fig, provenance)
    plt.close(fig)


# -- posterior samples along iterations (Figs. 8-10) ----------------------------------------------------

def observation_images(obs: Any, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """The observations ``rows`` as images: y with its unmeasured pixels at 0 where y is shaped like x,
    else the back-projection A^T y; and the column's title."""
    import torch

    sub = obs.subset(rows)
    y = sub.y.float()
    if tuple(y.shape[1:]) == tuple(sub.x_shape):
        mask = sub.op.measured(y)
        # an unmeasured pixel is 0, which the symmetric display range shows mid-gray: say so in the title
        return (y if mask is None else y * mask).numpy(), "y" if mask is None else "y\n(gray: not\nmeasured)"
    return sub.op.At(y).to(torch.float32).numpy(), "A^T y"


def pick_observations(indices: list[np.ndarray], n_obs: int, n: int) -> np.ndarray:
    """The first ``n`` observation rows that every posterior file holds (then the first others)."""
    if n < 1:
        raise ConfigError(f"figures.posterior_observations: must be a positive integer, got {n!r}")
    common = np.arange(n_obs)
    for idx in indices:
        common = np.intersect1d(common, idx)
    rows = [int(i) for i in common[:n]]
    taken = set(rows)
    rows += [i for i in range(n_obs) if i not in taken][:max(0, min(n, n_obs) - len(rows))]
    return np.sort(np.asarray(rows, dtype=np.int64))


def posterior_figure(y_img: np.ndarray, y_title: str, clean: np.ndarray, rows: np.ndarray,
                     posteriors: dict[str, dict[int, dict[int, np.ndarray]]], labels: dict[str, str], lim: float,
                     out: str, provenance: dict[str, Any], title: str) -> None:
    """Rows = observations; columns: y, the posterior samples of each variant along iterations k, the
    clean image. ``posteriors[variant][k][row]`` is the sample of observation ``row`` (missing: blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks: list[tuple[str, list[list[np.ndarray | None]], list[str]]] = []
    ys, xs = to_display(y_img, lim), to_display(clean, lim)
    blocks.append((y_title, [[ys[i]] for i in range(len(rows))], [""]))
    for v, by_k in posteriors.items():
        iters = sorted(by_k)
        disp = {k: {r: to_display(x[None], lim)[0] for r, x in by_k[k].items()} for k in iters}
        cells = [[disp[k].get(int(r)) for k in iters] for r in rows]
        blocks.append((labels.get(v, v).replace(": ", "\n"), cells, [f"k={k}" for k in iters]))
    blocks.append(("clean x", [[xs[i]] for i in range(len(rows))], [""]))
    widths = [max(len(b[2]), 2) for b in blocks]  # room for the titles over a single column
    fig, axes = plt.subplots(1, len(blocks), squeeze=False, gridspec_kw={"width_ratios": widths},
                             figsize=(sum(widths) * CELL_INCHES + 0.9 * len(blocks),
                                      len(rows) * CELL_INCHES + 1.1))
    for j, (ax, (name, cells, cols)) in enumerate(zip(axes[0], blocks)):
        _show(ax, cells, ys[0], name, row_labels=[f"obs {r}" for r in rows] if j == 0 else None, col_labels=cols)
    _suptitle(fig, title)
    fig.tight_layout()
    save_figure(out, fig, provenance)
    plt.close(fig)
