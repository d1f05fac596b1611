"""The MRI figures (paper Sec. 5.3 and Appendix C), from mri/posterior.h5, observations.h5 and the
prior samples along EM iterations:

- Fig. 6: held-out images (rows); for each R, the zero-filled inverse A^T y and posterior samples;
- Fig. 12: zero-filled inverses A^T y of training observations (what the prior is learned from);
- Fig. 13: prior samples of q_k along EM iterations k (rows);
- Fig. 14: posterior samples under a centred crop operator (outpainting), beside the observed crop.
Images in [-2, 2] are shown on [0, 1] as (x + 2) / 4 (the official display), zero-filled inverses too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emprior.core.artifacts import load_h5, save_figure
from emprior.evaluation.mri import to_unit
from emprior.report.figures import CELL_INCHES, _show, _suptitle, run_of

SHOWN = 6  # training observations (Fig. 12) and prior samples per iteration (Fig. 13)


def _grid(fig_blocks: list[tuple[str, list[list[np.ndarray | None]], list[str]]], row_labels: list[str],
          title: str, out: str, provenance: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    like = next(c for _, cells, _ in fig_blocks for row in cells for c in row if c is not None)
    scale = max(1.0, like.shape[0] / 64)  # 320 x 320 cells drawn larger than 64 x 64 ones
    widths = [max(len(b[2]), 1) for b in fig_blocks]
    fig, axes = plt.subplots(1, len(fig_blocks), squeeze=False, gridspec_kw={"width_ratios": widths},
                             figsize=(sum(widths) * 2 * CELL_INCHES * scale + 0.6 * len(fig_blocks),
                                      len(row_labels) * 2 * CELL_INCHES * scale + 1.2))
    for j, (ax, (name, cells, cols)) in enumerate(zip(axes[0], fig_blocks)):
        _show(ax, cells, like, name, row_labels=row_labels if j == 0 else None, col_labels=cols)
    _suptitle(fig, title)
    fig.tight_layout()
    save_figure(out, fig, provenance)
    plt.close(fig)


def fig6(data: dict[str, np.ndarray], tags: list[str], out: str, provenance: dict[str, Any], name: str) -> None:
    truth = to_unit(data["truth"][:, 0])
    n = len(truth)
    blocks = [("truth x", [[truth[i]] for i in range(n)], [""])]
    for tag in (t for t in tags if t.startswith("R")):
        zf = to_unit(data[f"{tag}/zero_filled"][:, 0])
        s = to_unit(data[f"{tag}/samples"][:, :, 0])
        cells = [[zf[i], *s[i]] for i in range(n)]
        blocks.append((f"R = {tag[1:]}", cells, ["A^T y"] + [f"x~{j + 1}" for j in range(s.shape[1])]))
    _grid(blocks, [f"image {i}" for i in range(n)],
          f"Fig. 6, {name}: held-out images, zero-filled inverse A^T y and posterior samples x ~ q_K(x | y) "
          "at each acceleration R", out, provenance)


def fig12(zero_filled: np.ndarray, out: str, provenance: dict[str, Any], name: str) -> None:
    z = to_unit(zero_filled[:, 0])
    _grid([("A^T y", [list(z)], [str(i) for i in range(len(z))])], ["train"],
          f"Fig. 12, {name}: zero-filled inverses A^T y of training observations (the prior is learned from y)",
          out, provenance)


def fig13(by_k: dict[int, np.ndarray], out: str, provenance: dict[str, Any], name: str, variant: str) -> None:
    iters = sorted(by_k)
    cells = [list(to_unit(by_k[k][:SHOWN, 0])) for k in iters]
    _grid([("prior samples", cells, [str(j) for j in range(len(cells[0]))])], [f"k={k}" for k in iters],
          f"Fig. 13, {name} ({variant}): samples of q_k along EM iterations k (q_0 Gaussian)", out, provenance)


def fig14(data: dict[str, np.ndarray], out: str, provenance: dict[str, Any], name: str) -> None:
    truth = to_unit(data["truth"][:, 0])
    zf = to_unit(data["crop/zero_filled"][:, 0])
    s = to_unit(data["crop/samples"][:, :, 0])
    n = len(truth)
    blocks = [("truth x", [[truth[i]] for i in range(n)], [""]),
              ("crop A^T y", [[zf[i]] for i in range(n)], [""]),
              ("posterior samples", [list(s[i]) for i in range(n)], [str(j + 1) for j in range(s.shape[1])])]
    _grid(blocks, [f"image {i}" for i in range(n)],
          f"Fig. 14, {name}: posterior samples given a centred crop of held-out images", out, provenance)


def figure_paths(out_dir: str | Path, experiment: str) -> dict[str, Path]:
    return {f: Path(out_dir) / f"{f}_{experiment}.png" for f in ("fig6", "fig12", "fig13", "fig14")}


def write_mri_figures(job: Any, posterior: str, observations: str, clean: str, out_dir: str,
                      samples: list[str]) -> None:
    """Figs. 6, 12, 13 (14 if the crop was sampled) of ``job.experiment``; ``samples`` are the
    prior_samples.h5 of the MRI variant along iterations."""
    from emprior.data.observations import load_observations

    data, attrs = load_h5(posterior, rule="mri_posterior")
    tags = list(attrs["tags"])
    paths = figure_paths(out_dir, job.experiment)
    prov = job.provenance("mri_figures")
    fig6(data, tags, str(paths["fig6"]), prov, job.experiment)
    obs = load_observations(observations)
    shown = obs.subset(np.arange(min(SHOWN, len(obs))))
    fig12(shown.op.At(shown.y).float().numpy(), str(paths["fig12"]), prov, job.experiment)
    variants = list(job.exp["variants"])
    by_k = {}
    for p in samples:
        v, k = run_of(p, variants)
        by_k[k] = load_h5(p, rule="prior_samples")[0]["x"]
    fig13(by_k, str(paths["fig13"]), prov, job.experiment, v)
    if "crop" in tags:
        fig14(data, str(paths["fig14"]), prov, job.experiment)
