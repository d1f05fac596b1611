"""observations.h5: the corrupted data set that EM learns from.

HDF5 schema (one file per experiment, ``results/<experiment>/data/observations.h5``):

========================  ==============================================================
``y``                     (N, *y_shape) float32, y_i = A_i x_i + noise_std * eps_i
``index``                 (N,) int64, row of ``clean.h5/x`` that produced y_i (for evaluation only)
``op/<name>``             (N, ...) per-observation operator parameters (mask, A matrix, k-space lines, kernel)
attr ``operator``         JSON: {kind, x_shape, noise_std, options} -- rebuilds the operator
attr ``noise_std``        float, Sigma_y = noise_std^2 I
attr ``seed``             int, seed the corruption was drawn with
attr ``provenance``       JSON: config digest, seed, versions, git commit
========================  ==============================================================

clean.h5 holds ``x`` (N, *x_shape) float32 (ground truth, used only by evaluation) and the dataset
config as attribute ``dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emprior.core.artifacts import load_h5, save_h5
from emprior.core.errors import ArtifactError
from emprior.core.rng import numpy_rng, torch_generator
from emprior.core.storage import Storage


@dataclass
class Observations:
    y: torch.Tensor
    index: np.ndarray
    op: Any  # emprior.operators.base.LinearOperator
    noise_std: float
    seed: int

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.op.x_shape)

    def subset(self, rows: np.ndarray) -> Observations:
        """The observations ``rows`` (positions in this set), with their operators."""
        rows = np.asarray(rows)
        return Observations(y=self.y[rows], index=self.index[rows], op=self.op[rows] if len(self.op) > 1 else self.op,
                            noise_std=self.noise_std, seed=self.seed)


def corrupt(x: np.ndarray, obs_cfg: dict[str, Any], seed: int, experiment: str) -> Observations:
    """Draw one observation per latent: operator parameters, then y = A x + noise (Sec. 4)."""
    from emprior.operators import make_operator

    x_t = torch.as_tensor(x, dtype=torch.float32)
    rng = numpy_rng(seed, experiment, "operator")
    op = make_operator(obs_cfg["operator"], len(x_t), tuple(x_t.shape[1:]), float(obs_cfg["noise_std"]), rng,
                       **obs_cfg.get("options", {}))
    y = op.observe(x_t, generator=torch_generator(seed, experiment, "noise"))
    return Observations(y=y, index=np.arange(len(x_t)), op=op, noise_std=float(obs_cfg["noise_std"]), seed=seed)


def save_observations(path: str | Path, obs: Observations, provenance: dict[str, Any],
                      storage: Storage | None = None) -> None:
    """Write observations.h5 (the schema above); ``storage`` picks the codec, never a lossy dtype."""
    from emprior.operators import save_operator_arrays

    arrays, attrs = save_operator_arrays(obs.op)
    datasets = {"y": obs.y.float().numpy(), "index": obs.index.astype(np.int64)}
    datasets.update({f"op/{k}": v for k, v in arrays.items()})
    save_h5(path, datasets, attrs={"operator": attrs, "noise_std": obs.noise_std, "seed": obs.seed},
            provenance=provenance, storage=storage)


def load_observations(path: str | Path) -> Observations:
    from emprior.operators import operator_from_arrays

    data, attrs = load_h5(path, rule="observe")
    for key in ("y", "index"):
        if key not in data:
            raise ArtifactError(f"{path}: dataset '{key}' missing (made by rule 'observe')")
    params = {k[len("op/"):]: v for k, v in data.items() if k.startswith("op/")}
    try:
        op = operator_from_arrays(params, attrs["operator"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: cannot rebuild the operator ({exc})") from None
    y = torch.as_tensor(data["y"])
    if tuple(y.shape[1:]) != tuple(op.y_shape) or (len(op) not in (1, len(y))):
        raise ArtifactError(f"{path}: y has shape {tuple(y.shape)} but the operator expects "
                            f"(N, {', '.join(map(str, op.y_shape))}) with N={len(op)}")
    return Observations(y=y, index=data["index"], op=op, noise_std=float(attrs["noise_std"]),
                        seed=int(attrs["seed"]))


def save_clean(path: str | Path, x: np.ndarray, dataset_cfg: dict[str, Any], provenance: dict[str, Any],
               storage: Storage | None = None) -> None:
    save_h5(path, {"x": np.asarray(x, dtype=np.float32)}, attrs={"dataset": dataset_cfg}, provenance=provenance,
            storage=storage)


def load_clean(path: str | Path) -> np.ndarray:
    data, _ = load_h5(path, rule="dataset")
    if "x" not in data:
        raise ArtifactError(f"{path}: dataset 'x' missing (made by rule 'dataset')")
    return data["x"]
