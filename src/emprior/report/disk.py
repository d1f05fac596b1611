"""The disk a config's DAG will fill, before anything runs (``python -m emprior disk-plan``).

Bytes are those of the arrays each artifact holds, computed in closed form from the config:

* ``clean.h5``: N x prod(x_shape) float32; ``observations.h5``: N x prod(y_shape) float32 for ``y``,
  N int64 for ``index``, and the operator arrays (drawn for 3 and 5 observations and extrapolated
  linearly in N: a per-observation mask grows with N, a shared kernel does not);
* per EM iteration k of a variant with an E-step: ``posterior.h5`` and its shards (kept: the audit
  trail), each N_k x (prod(x_shape) x s + 8 + 4) bytes (samples in s bytes, int64 index, float32
  residual ratio), N_k the E-step's observations (all, or the method's subset) times
  ``estep.samples_per_observation``;
* per evaluated iteration (``evaluate.iterations``): ``prior_samples.h5``, n_samples x prod(x_shape) x s,
  and as much again in its shards when ``evaluate.shards`` > 1 (kept, like the E-step's);
* with ``evaluate.fid``: ``data/fid_reference.h5``, the 2048-d Inception mean (float32) and covariance
  (float64);
* per iteration k >= 1: ``model.pt``, 2 x the bytes of the state dicts (EMA and raw weights) of the
  networks the method's M-step stores (:meth:`emprior.methods.base.EMMethod.checkpoint_networks`: the
  experiment's denoiser; DiffEM's conditional denoiser too; Ambient's masked denoiser instead), built on
  the meta device.

s is 4 for float32 and 2 for ``storage.dtype: float16`` (posterior and prior samples only). The
compressed size is not known before the arrays exist; the figures are what compression starts from
(docs/storage.md has measured ratios). HDF5 adds a few kB per file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emprior.config.seeds import seeds_of
from emprior.core.storage import Storage, storage_of

F32, I64 = 4, 8
FID_FEATURES = 2048
SAMPLE_DTYPE_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class Item:
    """One kind of artifact: ``files`` copies (iterations) of ``raw`` bytes each in float32 and
    ``stored`` bytes each in the configured dtype (both before compression)."""

    experiment: str
    variant: str | None
    artifact: str
    files: int
    raw: int
    stored: int

    @property
    def total_raw(self) -> int:
        return self.files * self.raw

    @property
    def total_stored(self) -> int:
        return self.files * self.stored


def _operator_bytes(obs_cfg: dict[str, Any], n: int, x_shape: tuple[int, ...], seed: int) -> tuple[int, int]:
    """(bytes of one observation's y, bytes of the operator arrays for n observations)."""
    from emprior.operators import make_operator, save_operator_arrays

    sizes, y_bytes = [], 0
    for m in (3, 5):
        op = make_operator(obs_cfg["operator"], m, x_shape, float(obs_cfg["noise_std"]), np.random.default_rng(seed),
                           **obs_cfg.get("options", {}))
        arrays, _ = save_operator_arrays(op)
        sizes.append(sum(np.asarray(a).nbytes for a in arrays.values()))
        y_bytes = F32 * int(np.prod(op.y_shape))
    per_obs = (sizes[1] - sizes[0]) // 2
    return y_bytes, sizes[0] - 3 * per_obs + n * per_obs


def _model_bytes(method: Any, x_shape: tuple[int, ...], obs_cfg: dict[str, Any], seed: int) -> int:
    """Bytes of the weights an M-step's model.pt holds: the method's networks, EMA and raw weights each."""
    import torch

    from emprior.operators import make_operator

    op = make_operator(obs_cfg["operator"], 1, x_shape, float(obs_cfg["noise_std"]), np.random.default_rng(seed),
                       **obs_cfg.get("options", {}))
    with torch.device("meta"):
        nets = method.checkpoint_networks(x_shape, op)
    return 2 * sum(t.numel() * t.element_size() for net in nets for t in net.state_dict().values())


def plan(config: dict[str, Any]) -> list[Item]:
    """Every artifact kind of every experiment / variant in ``config``, with its count and sizes."""
    from emprior.core.job import Job
    from emprior.data import dataset_shape
    from emprior.evaluation.selection import evaluated_iterations
    from emprior.methods import make_method

    storage = storage_of(config)
    s = SAMPLE_DTYPE_BYTES[storage.dtype]
    items: list[Item] = []
    for name, exp in config["experiments"].items():
        runs = len(seeds_of(config, name))  # one branch of every file per seed (emprior.config.seeds)
        n, *x = dataset_shape(exp["dataset"], int(config["seed"]))
        x_shape = tuple(x)
        d = int(np.prod(x_shape))
        items.append(Item(name, None, "data/clean.h5", runs, n * d * F32, n * d * F32))
        y_bytes, op_bytes = _operator_bytes(exp["observation"], n, x_shape, int(config["seed"]))
        obs = n * (y_bytes + I64) + op_bytes
        items.append(Item(name, None, "data/observations.h5", runs, obs, obs))
        if exp["evaluate"].get("fid"):
            fid = FID_FEATURES * F32 + FID_FEATURES**2 * I64
            items.append(Item(name, None, "data/fid_reference.h5", runs, fid, fid))
        n_eval = int(exp["evaluate"]["n_samples"])
        iterations = int(exp["iterations"])
        for vname, var in exp["variants"].items():
            method = make_method(var, exp)
            first = 0 if "init" in method.stages else 1
            if "estep" in method.stages:
                rows = []
                draws = int(exp["estep"].get("samples_per_observation", 1))  # S draws of every observation kept
                for k in range(1, iterations + 1):
                    subset = method.estep_subset(Job(config, name, vname, k), n)
                    rows.append((n if subset is None else len(subset)) * draws)
                # iterations with different N_k: report the mean file and the exact total
                raw = sum(r * (d * F32 + I64 + F32) for r in rows)
                stored = sum(r * (d * s + I64 + F32) for r in rows)
                for artifact in ("iter_k/posterior.h5", "iter_k/posterior/shard_*.h5 (all shards)"):
                    items.append(Item(name, vname, artifact, iterations * runs, raw // iterations,
                                      stored // iterations))
            n_evaluated = len(evaluated_iterations(exp, first))
            prior = ["iter_k/prior_samples.h5"]
            if exp["evaluate"].get("shards", 1) > 1:
                prior.append("iter_k/prior_samples/shard_*.h5 (all shards)")
            for artifact in prior:
                items.append(Item(name, vname, artifact, n_evaluated * runs, n_eval * d * F32, n_eval * d * s))
            model = _model_bytes(method, x_shape, exp["observation"], int(config["seed"]))
            items.append(Item(name, vname, "iter_k/model.pt", iterations * runs, model, model))
    return items


def human(n: float) -> str:
    """Decimal units: 614400000 -> '614.40 MB'."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.2f} {unit}"
    return f"{n / 1000:.2f} TB"


def format_plan(items: list[Item], storage: Storage, source: str = "config") -> str:
    """The plan as an aligned text table, per experiment / variant, with totals."""
    head = ("experiment", "variant", "artifact", "files", "per file f32", "per file stored", "total f32",
            "total stored")
    rows = [(i.experiment, i.variant or "-", i.artifact, str(i.files), human(i.raw), human(i.stored),
             human(i.total_raw), human(i.total_stored)) for i in items]
    for exp in dict.fromkeys(i.experiment for i in items):
        mine = [i for i in items if i.experiment == exp]
        rows.append((exp, "(all)", "total", str(sum(i.files for i in mine)), "", "",
                     human(sum(i.total_raw for i in mine)), human(sum(i.total_stored for i in mine))))
    rows.append(("(all)", "", "TOTAL", str(sum(i.files for i in items)), "", "",
                 human(sum(i.total_raw for i in items)), human(sum(i.total_stored for i in items))))
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines = [f"disk plan of {source}",
             f"storage: compression {storage.compression}"
             + (f" level {storage.level}" if storage.compression == "gzip" else "")
             + f", sample dtype {storage.dtype}" + (" (lossy)" if storage.lossy else " (lossless)"),
             "sizes: array bytes before compression ('f32': samples in float32; 'stored': in the configured dtype);",
             "  the compressed size is only known once written (measured ratios: docs/storage.md);",
             "  not counted: iter_000/model.pt (Gaussian q_0), logs, metrics, figures, and transient files",
             "  (an E-step shard's finished blocks until the shard is written, an M-step's resume checkpoint).",
             ""]
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)
