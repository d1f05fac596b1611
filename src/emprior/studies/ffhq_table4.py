"""Paper Table 4 at paper scale (diem-arxiv Appendix E, Figs. 17-19): posterior samplers on FFHQ-256 with
DPS's pretrained ADM (``ffhq_10m.pt``), one GPU job per (task, method, steps) cell, then a gather.

Protocol (docs/ffhq-table4.md says how it differs from the paper's):

- images: the first ``n_images`` (100) PNGs of ``images`` by file name (00000.png ... 00099.png), in
  [-1, 1] (:func:`emprior.data.ffhq.load_ffhq`); their names and sha256 go to the table's provenance;
- prior: :class:`~emprior.priors.adm.ADMDenoiser` around :func:`~emprior.nets.adm.load_guided_diffusion`
  (``checkpoint``, optional ``sha256``), sampled with DDIM(eta = 1) on the respaced trained timesteps
  (:class:`~emprior.priors.adm.RespacedVPSchedule`), x_T = z / sqrt(abar_T) (the reference's
  x^vp_T ~ N(0, I)), no final denoise (the last move returns x_hat at t = 0);
- tasks: each task's operator is drawn once for all images from (seed, task) and y = A x + noise_std e
  likewise, so every method and step count sees the same observations; x_T per image from
  (seed, task, steps, image) and the sampler noise from (seed, task, steps, shard, batch): the same for
  every method ("all methods are executed with the same seed"); one sample per observation;
- metrics on [0, 1]-clipped images: PSNR, SSIM (scikit-image), LPIPS (``lpips`` package, AlexNet,
  inputs mapped to [-1, 1]) per image, averaged per cell.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emprior.core.errors import ConfigError
from emprior.core.rng import derive_seed, torch_generator

__all__ = ["DEFAULTS", "TASKS", "cell_name", "cells", "check_config", "gather", "not_ready", "observations",
           "run_cell", "shard_indices"]

TASKS: dict[str, dict[str, Any]] = {  # the MMPS benchmark's four tasks on 256x256 FFHQ
    "box_inpainting": {"operator": "box_mask", "options": {"box": 128, "margin": 16}, "noise_std": 1.0},
    "random_inpainting": {"operator": "pixel_mask", "options": {"deleted": 0.98}, "noise_std": 0.01},
    "motion_deblur": {"operator": "blur", "options": {"kernel": "dps_motion", "size": 61, "intensity": 0.5,
                                                   "padding": "reflect"},
                      "noise_std": 0.1},
    "super_resolution": {"operator": "downsample", "options": {"factor": 4}, "noise_std": 0.1},
}

DEFAULTS: dict[str, Any] = {
    "checkpoint": None, "sha256": None, "images": None, "n_images": 100, "image_size": 256, "steps": [10, 100, 1000],
    "shards": {1000: 4}, "batch_size": 4, "clip_denoised": True, "sampler": "ddim", "eta": 1.0,
    "lpips_weights_dir": None, "figure_images": 3, "tasks": TASKS, "methods": None,
}


def check_config(cfg: Any) -> dict[str, Any]:
    """``ffhq_benchmark`` with defaults filled in; an unknown key or a bad value is a one-line ConfigError."""
    where = "ffhq_benchmark"
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(DEFAULTS)})")
    out = {**DEFAULTS, **cfg}
    for key in ("n_images", "image_size", "batch_size", "figure_images"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}.{key}: must be a positive integer, got {v!r}")
    steps = out["steps"]
    if not isinstance(steps, list) or not steps or any(isinstance(s, bool) or not isinstance(s, int)
                                                      or not 1 <= s <= 1000 for s in steps):
        raise ConfigError(f"{where}.steps: must be a list of integers in [1, 1000], got {steps!r}")
    shards = {int(k): v for k, v in (out["shards"] or {}).items() if int(k) in steps}  # others are unused
    for k, v in shards.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= out["n_images"]:
            raise ConfigError(f"{where}.shards.{k}: must be an integer in [1, n_images], got {v!r}")
    out["shards"] = shards
    if not isinstance(out["methods"], dict) or not out["methods"]:
        raise ConfigError(f"{where}.methods: must be a non-empty mapping of label -> {{method: ...}}")
    for label, spec in out["methods"].items():
        if not isinstance(spec, dict) or "method" not in spec:
            raise ConfigError(f"{where}.methods.{label}: must be a mapping with a 'method' key")
    for name, spec in out["tasks"].items():
        if not isinstance(spec, dict) or set(spec) - {"operator", "options", "noise_std"} or "operator" not in spec:
            raise ConfigError(f"{where}.tasks.{name}: must be {{operator, options, noise_std}}, got {spec!r}")
    return out


def cell_name(method: str) -> str:
    """A file-name slug of a method label: 'MMPS (3)' -> 'MMPS_3'."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]+", "_", method)).strip("_")


def cells(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (task, method, steps) cell and its shards: dicts with task, method, slug, steps, shard, shards."""
    cfg = check_config(cfg)
    out = []
    for task in cfg["tasks"]:
        for method in cfg["methods"]:
            for steps in cfg["steps"]:
                n = cfg["shards"].get(steps, 1)
                out += [{"task": task, "method": method, "slug": cell_name(method), "steps": steps, "shard": k,
                         "shards": n} for k in range(n)]
    return out


def shard_indices(n_images: int, shard: int, shards: int) -> np.ndarray:
    """The image indices of one shard: contiguous, sizes differing by at most one."""
    return np.array_split(np.arange(n_images), shards)[shard]


def not_ready(cfg: dict[str, Any]) -> str | None:
    """Why the cells cannot run here (no checkpoint / no images), or None."""
    ck, img = cfg.get("checkpoint"), cfg.get("images")
    if not ck:
        return ("n/a: ffhq_benchmark.checkpoint is not set (DPS's ffhq_10m.pt: "
                "https://github.com/DPS2022/diffusion-posterior-sampling#pretrained-models)")
    if not Path(ck).is_file():
        return f"n/a: ffhq_benchmark.checkpoint {ck!r} not found (DPS's ffhq_10m.pt)"
    if not img or not Path(img).is_dir():
        return f"n/a: ffhq_benchmark.images {img!r} is not a folder of FFHQ PNGs (00000.png ...)"
    return None


def image_manifest(folder: str | Path, n: int) -> list[dict[str, str]]:
    """Name and sha256 of the first ``n`` PNGs (sorted by relative path), as :func:`load_ffhq` reads them."""
    folder = Path(folder)
    files = sorted(folder.rglob("*.png"), key=lambda p: p.relative_to(folder).as_posix())[:n]
    return [{"name": p.relative_to(folder).as_posix(), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in files]


def observations(cfg: dict[str, Any], task: str, x: torch.Tensor, seed: int):
    """(operator, y) of ``task`` for all images x (N, 3, H, W) in [-1, 1], from (seed, task) only."""
    from emprior.operators import make_operator

    spec = cfg["tasks"][task]
    rng = np.random.default_rng(derive_seed(seed, "ffhq_operator", task))
    try:
        op = make_operator(spec["operator"], len(x), tuple(x.shape[1:]), float(spec.get("noise_std", 0.0)), rng,
                           **(spec.get("options") or {}))
    except ValueError as exc:
        raise ConfigError(f"ffhq_benchmark.tasks.{task}: {exc}") from None
    y = op.observe(x, generator=torch_generator(seed, "ffhq_observe", task))
    return op, y


def run_cell(cfg: dict[str, Any], seed: int, task: str, method: str, steps: int, shard: int,
             device: str = "cuda") -> dict[str, Any]:
    """Posterior samples of one cell's shard: {'index', 'samples' (n, 3, S, S) float32 in [-1, 1], 'seconds'}."""
    from emprior.data.ffhq import load_ffhq
    from emprior.diffusion.samplers import sample
    from emprior.nets.adm import load_guided_diffusion
    from emprior.posterior.base import make_posterior
    from emprior.priors.adm import ADMDenoiser, RespacedVPSchedule

    cfg = check_config(cfg)
    reason = not_ready(cfg)
    if reason:
        raise ConfigError(reason)
    x = torch.from_numpy(load_ffhq(cfg["images"], cfg["n_images"], cfg["image_size"]))
    op, y = observations(cfg, task, x, seed)
    net = load_guided_diffusion(cfg["checkpoint"], sha256=cfg["sha256"], key="ffhq_benchmark.checkpoint",
                                map_location=device)
    schedule = RespacedVPSchedule()
    denoiser = ADMDenoiser(net.to(device), schedule, clip=bool(cfg["clip_denoised"]))
    idx = shard_indices(cfg["n_images"], shard, cfg["shards"].get(steps, 1))
    spec = {k: v for k, v in cfg["methods"][method].items() if k != "method"}
    out, t0 = [], time.perf_counter()
    for b in range(0, len(idx), cfg["batch_size"]):
        ib = idx[b:b + cfg["batch_size"]]
        yb = y[torch.from_numpy(ib)].to(device=device, dtype=torch.float32)
        try:
            post = make_posterior(cfg["methods"][method]["method"], denoiser, op[ib], yb, **spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"ffhq_benchmark.methods.{method}: {exc}") from None
        x_T = torch.cat([schedule.initial_noise((1, *x.shape[1:]), torch_generator(seed, "ffhq_xT", task, steps, int(i)))
                         for i in ib]).to(device)
        g = torch_generator(seed, "ffhq_noise", task, steps, shard, b, device=device)
        xs = sample(post, x_T, schedule, steps, cfg["sampler"], eta=float(cfg["eta"]), final_denoise=False,
                    generator=g)
        out.append(xs.float().cpu())
    return {"index": idx, "samples": torch.cat(out).clamp(-1, 1).numpy(), "seconds": time.perf_counter() - t0}


def score(samples: np.ndarray, x: np.ndarray, lpips_model: Any = None) -> pd.DataFrame:
    """Per-image PSNR, SSIM (on [0, 1]-clipped images) and LPIPS (AlexNet, [-1, 1] inputs; NaN without weights)."""
    from emprior.evaluation.metrics.images import lpips_from_model, psnr, ssim

    a, r = np.clip((samples + 1) / 2, 0, 1), np.clip((x + 1) / 2, 0, 1)
    df = pd.DataFrame({"psnr": psnr(a, r, 1.0), "ssim": ssim(a, r, 1.0)})
    df["lpips"] = np.nan if lpips_model is None else lpips_from_model(lpips_model, a, r, data_range=(0.0, 1.0))
    return df


def attach_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Add paper_lpips, paper_psnr, paper_ssim from diem-arxiv Table 4, matched on method/steps/task."""
    from emprior.report.tables import paper_table

    paper = paper_table("table4")[["method", "steps", "task", "lpips", "psnr", "ssim"]]
    paper = paper.rename(columns={c: f"paper_{c}" for c in ("lpips", "psnr", "ssim")})
    paper["steps"] = paper["steps"].astype("Int64")
    return df.merge(paper, on=["method", "steps", "task"], how="left")


def gather(cfg: dict[str, Any], cell_files: list[str], seed: int, out_csv: str, out_md: str, out_tex: str,
           out_images_csv: str, provenance: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per-image metrics of every cell, their means per (task, method, steps) beside the paper's values,
    written as csv / md / tex (and the per-image csv). No cells (not ready): every value n/a and why."""
    from emprior.core.artifacts import load_h5
    from emprior.evaluation.metrics import MetricUnavailable
    from emprior.evaluation.metrics.images import lpips_model as make_lpips

    cfg = check_config(cfg)
    reason = not_ready(cfg)
    rows, per_image = [], []
    lp_status = "not run"
    if reason is None and cell_files:
        from emprior.data.ffhq import load_ffhq

        x = load_ffhq(cfg["images"], cfg["n_images"], cfg["image_size"])
        model = make_lpips("alex", cfg["lpips_weights_dir"])
        lp_status = model.reason if isinstance(model, MetricUnavailable) else "ok"
        model = None if isinstance(model, MetricUnavailable) else model
        for f in cell_files:
            arrays, attrs = load_h5(f)
            df = score(arrays["samples"], x[arrays["index"]], model)
            df.insert(0, "image", arrays["index"])
            for k in ("task", "method", "steps"):
                df.insert(0, k, attrs[k])
            per_image.append(df)
        per = pd.concat(per_image, ignore_index=True)
        table = per.groupby(["method", "steps", "task"], sort=False)[["lpips", "psnr", "ssim"]].mean().reset_index()
        table["n_images"] = per.groupby(["method", "steps", "task"], sort=False).size().values
        table["status"] = "ok"
    else:
        per = pd.DataFrame(columns=["task", "method", "steps", "image", "psnr", "ssim", "lpips"])
        for task in cfg["tasks"]:
            for method in cfg["methods"]:
                for steps in cfg["steps"]:
                    rows.append({"method": method, "steps": steps, "task": task, "lpips": math.nan, "psnr": math.nan,
                                 "ssim": math.nan, "n_images": 0, "status": reason or "n/a: no cells ran"})
        table = pd.DataFrame(rows)
    table["lpips_status"] = lp_status
    table = attach_paper(table)
    for p in (out_csv, out_md, out_tex, out_images_csv):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    per.to_csv(out_images_csv, index=False)
    shown = table.copy()
    for c in ("lpips", "psnr", "ssim"):
        shown[c] = [f"{v:.3g}" if np.isfinite(v) else "n/a" for v in shown[c].astype(float)]
    if reason is not None:  # one reason for every row: said once below the table
        shown = shown.drop(columns=["status", "lpips_status"])
    note = "" if reason is None else f"\n\n{reason}\n"
    prov = "" if provenance is None else f"\n\n<!-- provenance: {json.dumps(provenance, default=str)} -->\n"
    Path(out_md).write_text("# Table 4 (FFHQ-256, DPS ADM)\n\n" + shown.to_markdown(index=False) + note + prov)
    Path(out_tex).write_text(shown.to_latex(index=False, escape=True))
    return table


def figures(cfg: dict[str, Any], cell_files: list[str], seed: int, out_dir: str, steps: int | None = None
            ) -> list[Path]:
    """One sample figure per task (Figs. 17-19): the first ``figure_images`` images, at ``steps``
    (default: the largest step count); nothing without cells."""
    from emprior.core.artifacts import load_h5
    from emprior.data.ffhq import load_ffhq
    from emprior.report.ffhq_figures import sample_figure

    cfg = check_config(cfg)
    if not cell_files or not_ready(cfg):
        return []
    steps = max(cfg["steps"]) if steps is None else steps
    rows = np.arange(min(cfg["figure_images"], cfg["n_images"]))
    x = torch.from_numpy(load_ffhq(cfg["images"], cfg["n_images"], cfg["image_size"]))
    got: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for f in cell_files:
        arrays, attrs = load_h5(f)
        if int(attrs["steps"]) != steps:
            continue
        per = got.setdefault(attrs["task"], {}).setdefault(attrs["method"], {})
        per.update({int(i): s for i, s in zip(arrays["index"], arrays["samples"])})
    out = []
    for task, by_method in got.items():
        op, y = observations(cfg, task, x, seed)
        seen = op.At(y).numpy()
        if seen.shape != x.shape:  # pragma: no cover - every task's adjoint maps back to image space
            continue
        samples = {m: np.stack([by_method[m][int(i)] for i in rows]) for m in cfg["methods"]
                   if m in by_method and all(int(i) in by_method[m] for i in rows)}
        out.append(sample_figure(x[rows].numpy(), seen[rows], samples, Path(out_dir) / f"table4_ffhq_{task}.png",
                                 f"FFHQ-256, {task}, {steps} steps (one sample per method)"))
    return out
