"""Processor-independent CPU arithmetic: the math libraries' dispatch pinned before torch loads.

torch's CPU results depend on which vector instructions three libraries pick at run time on the
processor at hand: ATen's own kernels (``ATEN_CPU_CAPABILITY``: default, avx2, avx512), oneDNN's JIT
kernels behind convolutions (``ONEDNN_MAX_CPU_ISA``) and Intel MKL's BLAS / FFT behind matmuls
(``MKL_CBWR``, MKL's "conditional numerical reproducibility"). A sum over a vector register of 16 floats
(AVX-512) and one over 8 (AVX2) round differently, and EM carries those last-bit differences through
its iterations, so the same config and seed gave other arrays on another processor.

The config section ``reproducibility`` (``cpu_dispatch``):

- ``portable`` (default): every library is capped at AVX2, the instruction set that every x86-64
  processor of the last decade (Intel since 2013, AMD since 2015) has: ``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``MKL_CBWR=COMPATIBLE``. MKL documents its AVX2 branch as reproducible on
  *Intel* processors only (on others it falls back to its AUTO branch); ``COMPATIBLE`` (SSE2 code without
  the approximate rcpps/rsqrtps instructions) is the one branch it promises to give the same results on
  Intel and non-Intel processors. Threads are fixed by the config (``torch_threads``), which MKL's CNR
  mode also requires.
- ``native``: the environment is left as it is; each library picks the fastest kernels of the processor
  (results may differ between machines in the last bits, then more along EM iterations).

The pins are environment variables that each library reads once, when it loads, so they are set by the
job launcher (``python -m emprior``, and under ``torchrun -m emprior`` in every process) before torch is
imported (:func:`pin_from_argv`). A process that imported torch before (a test calling the pipeline
functions directly) cannot be pinned: :func:`record` then says so in the provenance, and the audit
shows it. This module imports neither torch nor numpy.

CUDA is not covered: GPU kernels are chosen by the GPU model and library versions; ``cuda_deterministic``
turns on ``torch.use_deterministic_algorithms`` with cuBLAS's fixed workspace
(``CUBLAS_WORKSPACE_CONFIG=:4096:8``), which makes repeated runs on one GPU model identical, at a cost
that depends on the network (not measured here: no GPU).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

DISPATCH_MODES = ("portable", "native")
DEFAULT_MODE = "portable"

# variable -> value, for cpu_dispatch: portable
PORTABLE_PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}
CUDA_PINS: dict[str, str] = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
WATCHED = tuple(PORTABLE_PINS) + ("MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "DNNL_MAX_CPU_ISA") + tuple(CUDA_PINS)

# what pin_from_argv did in this process: mode, whether torch was already loaded, the variables it set
_STATE: dict[str, Any] = {"mode": None, "torch_loaded_before": None, "set": {}}


def settings(config: dict[str, Any] | None) -> dict[str, Any]:
    """The ``reproducibility`` section with its defaults filled in."""
    sec = dict((config or {}).get("reproducibility") or {})
    return {"cpu_dispatch": sec.get("cpu_dispatch", DEFAULT_MODE),
            "cuda_deterministic": bool(sec.get("cuda_deterministic", False))}


def pins(config: dict[str, Any] | None) -> dict[str, str]:
    """The environment variables a job of ``config`` starts with (empty for ``native``)."""
    s = settings(config)
    if s["cpu_dispatch"] not in DISPATCH_MODES:
        from emprior.core.errors import ConfigError

        raise ConfigError(f"reproducibility.cpu_dispatch: must be one of {', '.join(DISPATCH_MODES)}, "
                          f"got {s['cpu_dispatch']!r}")
    out = dict(PORTABLE_PINS) if s["cpu_dispatch"] == "portable" else {}
    if s["cuda_deterministic"]:
        out.update(CUDA_PINS)
    return out


def apply(config: dict[str, Any] | None, environ: Any = None) -> dict[str, str]:
    """Set ``config``'s pins in ``environ`` (default: this process's), overriding what was there, so a
    user's own caps cannot make a pinned run differ; returns what was set."""
    env = os.environ if environ is None else environ
    wanted = pins(config)
    for k, v in wanted.items():
        env[k] = v
    if environ is None:
        _STATE.update(mode=settings(config)["cpu_dispatch"], torch_loaded_before="torch" in sys.modules,
                      set=dict(wanted))
    return wanted


def _config_path(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def _read_config(path: str) -> dict[str, Any] | None:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError:
        return None  # the command's own loader reports a missing file with its one line
    try:
        if p.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - a malformed file is reported by the command's loader
        return None


def pin_from_argv(argv: list[str] | None = None) -> None:
    """The launcher's step: read ``--config`` from the command line and pin its dispatch (the default,
    ``portable``, also when the file cannot be read: its loader reports that error right after)."""
    argv = sys.argv[1:] if argv is None else argv
    path = _config_path(argv)
    config = _read_config(path) if path else None
    try:
        apply(config if isinstance(config, dict) else None)
    except Exception:  # noqa: BLE001 - a bad value is a ConfigError raised again by the command
        apply(None)


@functools.lru_cache(maxsize=1)
def processor() -> dict[str, Any]:
    """The processor this process runs on: model name, vendor and its widest x86 vector extension."""
    info: dict[str, Any] = {"machine": platform.machine(), "model": platform.processor() or "unknown",
                            "vendor": "unknown", "isa": "unknown"}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), v.strip())
        elif fields:
            break  # the first processor's block is enough
    info["model"] = fields.get("model name", info["model"])
    info["vendor"] = fields.get("vendor_id", "unknown")
    flags = set(fields.get("flags", "").split())
    info["isa"] = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse" if flags else "unknown"
    return info


def record() -> dict[str, Any]:
    """What the provenance says about this process's arithmetic: the processor, the pins requested and
    whether they were in force (set before torch loaded), the watched variables as they are, and the
    vector extension ATen dispatched to (when torch is loaded)."""
    torch = sys.modules.get("torch")
    aten = None
    if torch is not None:
        try:
            aten = str(torch.backends.cpu.get_cpu_capability())
        except Exception:  # noqa: BLE001 - older torch
            aten = None
    mode = _STATE["mode"]
    in_force = bool(mode is not None and not _STATE["torch_loaded_before"])
    return {"processor": processor(), "cpu_dispatch": mode or "not pinned (not started by python -m emprior)",
            "pins_in_force": in_force, "aten_capability": aten,
            "env": {k: os.environ[k] for k in WATCHED if k in os.environ}}


def signature(rec: dict[str, Any] | None) -> tuple[str, str, str]:
    """(processor model, dispatch mode, ATen capability) of a provenance record's ``arithmetic``: two
    jobs with the same signature ran the same kernels; the audit flags a run that mixes signatures in
    a way that can change bytes (native dispatch on different processors, or pinned and unpinned jobs)."""
    rec = rec or {}
    proc = (rec.get("processor") or {}).get("model", "unknown")
    mode = rec.get("cpu_dispatch", "unknown") if rec.get("pins_in_force", False) else "unpinned"
    return proc, mode, str(rec.get("aten_capability"))
