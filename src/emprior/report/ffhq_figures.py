"""Sample figures of the FFHQ Table 4 (as diem-arxiv Figs. 17-19): per task, rows = images, columns =
ground truth, observation (A^T y, i.e. the measured pixels / the zero-filled or adjoint-upsampled
image) and one posterior sample per method, at one step count."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _img(x: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1], clipped."""
    return np.clip((np.asarray(x, dtype=np.float64).transpose(1, 2, 0) + 1) / 2, 0, 1)


def sample_figure(truth: np.ndarray, observed: np.ndarray, samples: dict[str, np.ndarray], out: str | Path,
                  title: str) -> Path:
    """``truth``/``observed`` (R, 3, H, W); ``samples`` method -> (R, 3, H, W); a PNG grid of R rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("ground truth", truth), ("observation", observed), *samples.items()]
    rows = len(truth)
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.6 * len(cols), 1.6 * rows + 0.4), squeeze=False)
    for j, (name, arr) in enumerate(cols):
        for i in range(rows):
            ax = axes[i, j]
            ax.imshow(_img(arr[i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
