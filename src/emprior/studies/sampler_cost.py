"""Paper Table 5: cost of one posterior sampling step per method, on one U-Net and one batch.

For each method (DiffPIR, DPS, GDM, TMPD, MMPS (1/3/5) by default, options as in Table 4) we measure

- ``vjps_per_step``: vector-Jacobian products per posterior-denoiser call, from the denoiser's
  ``stats``: 0, 1, 1, 2, 1, 3, 5 (paper: 0, 1, 1, 2, 2, 4, 6). MMPS (k) with the Tweedie covariance
  costs k solver matvecs, one VJP each; the official code spends one more on the final J^T A^T v of
  Eq. (19), which emprior accumulates from the solver's products (:mod:`emprior.linalg.batched`, ``image``);
- ``time_ms`` / ``cpu_ms``: wall / process-CPU time of one sampling step (Algorithm 2 with the
  posterior denoiser), the median over ``repeats`` timed runs of ``steps`` steps each, divided by
  ``steps``. All methods are timed in one process after ``warmup`` untimed runs each, and the repeats
  are interleaved (round r visits the methods in an order rotated by r), so a slow phase of the
  machine hits every method alike. ``time_ratio`` uses CPU time on CPU (with one thread it is the
  work done, which other jobs on a shared machine barely inflate, unlike wall time) and wall time
  on CUDA;
- ``peak_mb``: the peak memory one step needs on top of what is resident before it. CPU: a fresh
  Python process per method builds the same net and inputs, runs one warm-up step at batch 1, then
  resets the kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``), runs one step
  at the full batch and reads ``VmHWM - VmRSS_before`` from /proc/self/status (``memory_method``
  "vmhwm"; "ru_maxrss" if the reset is not permitted, which only sees peaks above the setup's). CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the allocation before.

and report time and memory as ratios to DPS next to the paper's (DiffPIR 30.2, DPS 40.5, GDM 47.6,
TMPD 62.2, MMPS (1) 58.0, MMPS (3) 90.1, MMPS (5) 122.1 -> 0.75, 1, 1.18, 1.54, 1.43, 2.22, 3.01).
The network is built by :func:`emprior.nets.build_denoiser` with its parameters frozen
(``requires_grad_(False)``: VJPs are taken with respect to x_t only, as when sampling); its weights
are a seeded random initialisation with the zero-initialised layers re-drawn (a fresh net has a
scalar Jacobian, on which GMRES stops after one iteration), which changes no per-iteration cost.
The absolute numbers depend on the machine; the ratios are what compares with the paper (GPU,
FFHQ 256, ADM).
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emprior.core.artifacts import write_artifact
from emprior.report.markdown import frame_rows, pipe_table
from emprior.diffusion.samplers import sample
from emprior.diffusion.schedule import Schedule
from emprior.core.errors import ConfigError, EmpriorError
from emprior.core.log import get_logger
from emprior.operators import make_operator
from emprior.posterior import make_posterior
from emprior.core.rng import derive_seed, torch_generator
from emprior.studies.sampler_accuracy import DEFAULT_METHODS, check_methods

__all__ = ["COLUMNS", "DEFAULT_METHODS", "Setup", "build_setup", "check_config", "main", "markdown_table",
           "peak_memory", "run_benchmark", "time_methods"]

log = get_logger("emprior.studies.sampler_cost")

REFERENCE = "DPS"
COLUMNS = ["method", "vjps_per_step", "time_ms", "cpu_ms", "time_ratio", "peak_mb", "memory_ratio",
           "paper_vjps", "paper_time", "paper_memory", "paper_time_ratio", "paper_memory_ratio",
           "memory_method"]
_KNOWN = {"denoiser", "x_shape", "batch_size", "task", "schedule", "steps", "warmup", "repeats", "memory",
          "device", "methods"}


# ---------------------------------------------------------------------------------------------
# Config and inputs
# ---------------------------------------------------------------------------------------------

def _pos_int(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ConfigError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_config(cfg: Any) -> dict[str, Any]:
    """Validated copy of the ``cost_benchmark`` section with defaults filled in."""
    where = "cost_benchmark"
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _KNOWN)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    for key in ("denoiser", "x_shape", "batch_size", "task"):
        if key not in cfg:
            raise ConfigError(f"{where}.{key}: missing")
    x_shape = cfg["x_shape"]
    if not isinstance(x_shape, (list, tuple)) or len(x_shape) != 3:
        raise ConfigError(f"{where}.x_shape: expected [C, H, W], got {x_shape!r}")
    out = {
        "denoiser": dict(cfg["denoiser"]),
        "x_shape": [_pos_int(v, f"{where}.x_shape") for v in x_shape],
        "batch_size": _pos_int(cfg["batch_size"], f"{where}.batch_size"),
        "task": dict(cfg["task"]),
        "schedule": dict(cfg.get("schedule") or {"sigma_min": 1e-3, "sigma_max": 1e2}),
        "steps": _pos_int(cfg.get("steps", 4), f"{where}.steps"),
        "warmup": _pos_int(cfg.get("warmup", 1), f"{where}.warmup", 0),
        "repeats": _pos_int(cfg.get("repeats", 5), f"{where}.repeats"),
        "memory": cfg.get("memory", True),
        "device": cfg.get("device", "cpu"),
        "methods": check_methods(cfg.get("methods"), f"{where}.methods"),
    }
    if not isinstance(out["memory"], bool):
        raise ConfigError(f"{where}.memory: must be true or false, got {out['memory']!r}")
    if out["device"] not in ("cpu", "cuda"):
        raise ConfigError(f"{where}.device: must be 'cpu' or 'cuda', got {out['device']!r}")
    if out["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}.device: 'cuda' requested but torch.cuda.is_available() is False")
    if REFERENCE not in out["methods"]:
        raise ConfigError(f"{where}.methods: must include {REFERENCE!r} (ratios are relative to it), "
                          f"got {list(out['methods'])}")
    for key in ("operator", "noise_std"):
        if key not in out["task"]:
            raise ConfigError(f"{where}.task.{key}: missing")
    return out


def _randomize_zero_init(net: torch.nn.Module) -> None:
    """Re-draw the layers that start at zero (the output conv, adaLN-Zero modulations) with their default
    init. A fresh net is d(x_t) = x_t / (sigma^2 + 1) exactly, whose Jacobian is a multiple of I: GMRES
    would then converge in one iteration and MMPS (3)/(5) would not cost what they cost on a trained net."""
    for module in net.modules():
        weight = getattr(module, "weight", None)
        zero = isinstance(weight, torch.Tensor) and not bool(weight.any())
        if zero and hasattr(module, "reset_parameters"):
            module.reset_parameters()


class Setup:
    """Frozen net, operator, observation y, x_T and schedule shared by every method."""

    def __init__(self, cfg: dict[str, Any], seed: int, batch_size: int | None = None):
        from emprior.nets import build_denoiser

        self.device = torch.device(cfg["device"])
        x_shape = tuple(cfg["x_shape"])
        n = batch_size or cfg["batch_size"]
        torch.manual_seed(derive_seed(seed, "cost", "net"))
        try:
            net = build_denoiser(cfg["denoiser"], x_shape)
        except ValueError as exc:
            raise ConfigError(f"cost_benchmark.denoiser: {exc}") from None
        _randomize_zero_init(net)
        self.denoiser = net.to(self.device).eval().requires_grad_(False)
        task = cfg["task"]
        rng = np.random.default_rng(derive_seed(seed, "cost", "operator"))
        try:
            self.op = make_operator(task["operator"], n, x_shape, float(task["noise_std"]), rng,
                                    **(task.get("options") or {}))
        except ValueError as exc:
            raise ConfigError(f"cost_benchmark.task: {exc}") from None
        g = torch_generator(seed, "cost", "inputs")
        x = torch.randn((n, *x_shape), generator=g).clamp(-2, 2)
        self.y = self.op.observe(x, generator=g).to(self.device)
        try:
            self.schedule = Schedule(cfg["schedule"]["sigma_min"], cfg["schedule"]["sigma_max"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"cost_benchmark.schedule: {exc}") from None
        self.x_T = (self.schedule.sigma_max * torch.randn((n, *x_shape), generator=g)).to(self.device)
        self.seed = seed

    def posterior(self, spec: dict[str, Any], label: str):
        options = {k: v for k, v in spec.items() if k != "method"}
        try:
            return make_posterior(spec["method"], self.denoiser, self.op, self.y, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cost_benchmark.methods.{label}: {exc}") from None

    def run(self, post, steps: int) -> Tensor:
        """``steps`` DDPM steps (Algorithm 2) of the posterior denoiser from the shared x_T."""
        g = torch_generator(self.seed, "cost", "noise") if self.device.type == "cpu" else None
        return sample(post, self.x_T, self.schedule, steps, "ddpm", final_denoise=False, generator=g)


def build_setup(cfg: dict[str, Any], seed: int) -> Setup:
    return Setup(check_config(cfg), seed)


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(setup: Setup, methods: dict[str, dict[str, Any]], steps: int, warmup: int,
                 repeats: int) -> dict[str, dict[str, Any]]:
    """Per method: median wall and process-CPU seconds per step over interleaved repeats, all per-step
    times, and VJPs per step."""
    posts = {label: setup.posterior(spec, label) for label, spec in methods.items()}
    for post in posts.values():
        for _ in range(warmup):
            setup.run(post, steps)
    labels = list(posts)
    wall: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(repeats):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            post = posts[label]
            post.reset_stats()
            _sync(setup.device)
            t0, c0 = time.perf_counter(), time.process_time()
            setup.run(post, steps)
            _sync(setup.device)
            wall[label].append((time.perf_counter() - t0) / steps)
            cpu[label].append((time.process_time() - c0) / steps)
    out = {}
    for label, post in posts.items():
        calls = max(int(post.stats["calls"]), 1)
        out[label] = {"seconds": statistics.median(wall[label]), "cpu_seconds": statistics.median(cpu[label]),
                      "all": wall[label], "all_cpu": cpu[label], "vjps_per_step": post.stats["vjps"] / calls}
    return out


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure_step(cfg: dict[str, Any], seed: int, label: str) -> dict[str, Any]:
    """Peak extra memory of one step of method ``label`` in *this* process (see module docstring)."""
    setup = Setup(cfg, seed)
    spec = cfg["methods"][label]
    # Warm-up at batch 1: library initialisation (autograd engine, FFT plans, oneDNN) is not the step.
    small = Setup(cfg, seed, batch_size=1)
    small.run(small.posterior(spec, label), 1)
    post = setup.posterior(spec, label)
    gc.collect()
    if setup.device.type == "cuda":
        _sync(setup.device)
        base = torch.cuda.memory_allocated(setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)
        setup.run(post, 1)
        _sync(setup.device)
        peak = torch.cuda.max_memory_allocated(setup.device)
        return {"peak_bytes": peak - base, "method": "cuda_max_allocated", "absolute_bytes": peak}
    rss0 = _status_kb("VmRSS")
    if rss0 is not None and _reset_hwm():
        setup.run(post, 1)
        hwm = _status_kb("VmHWM")
        return {"peak_bytes": max(hwm - rss0, 0) * 1024, "method": "vmhwm", "absolute_bytes": hwm * 1024}
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    setup.run(post, 1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return {"peak_bytes": max(after - max(before, rss0 or 0), 0) * 1024, "method": "ru_maxrss",
            "absolute_bytes": after * 1024}


def _memory_worker() -> None:
    """Entry point of the fresh process: JSON job on stdin, JSON result on stdout's last line."""
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(int(job["threads"]))
    res = _measure_step(job["cfg"], int(job["seed"]), job["label"])
    print(json.dumps(res))


def peak_memory(cfg: dict[str, Any], seed: int, label: str, timeout: float = 600.0) -> dict[str, Any]:
    """Run :func:`_measure_step` for ``label`` in a fresh Python process (CPU) or in-process (CUDA)."""
    if cfg["device"] == "cuda":
        return _measure_step(cfg, seed, label)
    job = json.dumps({"cfg": cfg, "seed": seed, "label": label, "threads": torch.get_num_threads()})
    cmd = [sys.executable, "-c", "from emprior.studies.sampler_cost import _memory_worker; _memory_worker()"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    try:
        proc = subprocess.run(cmd, input=job, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        raise EmpriorError(f"cost_benchmark: memory worker for {label!r} timed out after {timeout:.0f} s"
                           ) from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmpriorError(f"cost_benchmark: memory worker for {label!r} failed ({last})")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------

def run_benchmark(cfg: dict[str, Any], seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The Table 5 frame (columns :data:`COLUMNS`) and a runtime record (all per-step times)."""
    from emprior.report.tables import paper_table

    cfg = check_config(cfg)
    t_start = time.perf_counter()
    setup = Setup(cfg, seed)
    timed = time_methods(setup, cfg["methods"], cfg["steps"], cfg["warmup"], cfg["repeats"])
    memory = {label: peak_memory(cfg, seed, label) if cfg["memory"] else None for label in cfg["methods"]}
    paper = paper_table("table5").set_index("method")
    # On a (shared) CPU the process's CPU time is the cost that other jobs do not inflate; on a GPU,
    # wall time after synchronisation, as the paper.
    basis = "seconds" if cfg["device"] == "cuda" else "cpu_seconds"
    ref_t = timed[REFERENCE][basis]
    ref_m = memory[REFERENCE]["peak_bytes"] if memory[REFERENCE] else None
    rows = []
    paper_t, paper_m = paper.loc[REFERENCE, "time"], paper.loc[REFERENCE, "memory"]
    for label in cfg["methods"]:
        t, m = timed[label], memory[label]
        p = paper.loc[label] if label in paper.index else None
        rows.append({
            "method": label,
            "vjps_per_step": t["vjps_per_step"],
            "time_ms": 1e3 * t["seconds"],
            "cpu_ms": 1e3 * t["cpu_seconds"],
            "time_ratio": t[basis] / ref_t,
            "peak_mb": m["peak_bytes"] / 2**20 if m else math.nan,
            "memory_ratio": m["peak_bytes"] / ref_m if m and ref_m else math.nan,
            "paper_vjps": float(p["vjps_per_step"]) if p is not None else math.nan,
            "paper_time": float(p["time"]) if p is not None else math.nan,
            "paper_memory": float(p["memory"]) if p is not None else math.nan,
            "paper_time_ratio": float(p["time"] / paper_t) if p is not None else math.nan,
            "paper_memory_ratio": float(p["memory"] / paper_m) if p is not None else math.nan,
            "memory_method": m["method"] if m else "not measured",
        })
        log.info("%-9s vjps %.1f  %.2f ms/step wall, %.2f ms CPU (x%.2f)  peak %s", label, t["vjps_per_step"],
                 1e3 * t["seconds"], 1e3 * t["cpu_seconds"], t[basis] / ref_t,
                 f"{m['peak_bytes'] / 2**20:.1f} MiB" if m else "n/a")
    runtime = {"seconds_total": round(time.perf_counter() - t_start, 3), "threads": torch.get_num_threads(),
               "step_seconds": {k: v["all"] for k, v in timed.items()},
               "step_cpu_seconds": {k: v["all_cpu"] for k, v in timed.items()},
               "absolute_peak_bytes": {k: (v or {}).get("absolute_bytes") for k, v in memory.items()}}
    return pd.DataFrame(rows, columns=COLUMNS), runtime


def markdown_table(df: pd.DataFrame, cfg: dict[str, Any], runtime: dict[str, Any] | None = None) -> str:
    cfg = check_config(cfg)
    mem = sorted(set(df["memory_method"]))
    how = {"vmhwm": "peak resident-set growth of one step (VmHWM after reset - VmRSS before) in a fresh "
                    "process per method",
           "ru_maxrss": "growth of ru_maxrss over one step in a fresh process per method",
           "cuda_max_allocated": "torch.cuda.max_memory_allocated growth over one step",
           "not measured": "not measured"}
    task = cfg["task"]
    threads = (runtime or {}).get("threads", torch.get_num_threads())
    timer = "wall time" if cfg["device"] == "cuda" else "CPU time (robust to other jobs on the machine)"
    caption = (
        f"U-Net {cfg['denoiser']} on a batch of {cfg['batch_size']} x {cfg['x_shape']}, task "
        f"{task['operator']} {task.get('options', {})} (sigma_y = {task['noise_std']}), {cfg['device']} with "
        f"{threads} thread(s). "
        f"Time: median over {cfg['repeats']} interleaved repeats of {cfg['steps']} DDPM steps (after "
        f"{cfg['warmup']} warm-up run(s)), wall and process CPU time; the ratio uses {timer}. "
        f"Memory: {'; '.join(how.get(m, m) for m in mem)}. Ratios are to DPS; "
        "paper: diem-arxiv Table 5 (FFHQ 256, ADM, GPU; time and memory as printed there)."
    )
    lines = ["# Table 5: cost of one posterior sampling step", "", caption, ""]
    heads = ["method", "VJPs", "wall (ms)", "CPU (ms)", "time / DPS", "peak (MiB)", "memory / DPS",
             "paper VJPs", "paper time", "paper time / DPS", "paper memory", "paper memory / DPS"]
    keys = [("method", 0), ("vjps_per_step", 1), ("time_ms", 2), ("cpu_ms", 2), ("time_ratio", 2),
            ("peak_mb", 1), ("memory_ratio", 2), ("paper_vjps", 0), ("paper_time", 1),
            ("paper_time_ratio", 2), ("paper_memory", 2), ("paper_memory_ratio", 2)]
    lines += pipe_table(heads, frame_rows(df, keys))
    return "\n".join(lines) + "\n"


def main(cfg: dict[str, Any], seed: int, out_csv: str, out_md: str,
         provenance: dict[str, Any] | None = None) -> pd.DataFrame:
    """Measure section ``cfg`` (config key ``cost_benchmark``); write ``table5.csv`` and ``table5.md``
    atomically with provenance (all per-step times go to the sidecars' runtime record)."""
    df, runtime = run_benchmark(cfg, seed)
    csv = df.to_csv(index=False)
    md = markdown_table(df, cfg, runtime)
    write_artifact(out_csv, lambda tmp: tmp.write_text(csv), provenance, runtime)
    write_artifact(out_md, lambda tmp: tmp.write_text(md), provenance, runtime)
    log.info("table5: %d methods in %.1f s -> %s", len(df), runtime["seconds_total"], out_csv)
    return df

