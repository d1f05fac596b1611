"""``python -m emprior rerun ARTIFACT``: run the job that wrote an artifact again and compare bytes.

The artifact's sidecar records the job's ``python -m emprior`` arguments, its job config file and the
folder it ran in (:func:`emprior.core.artifacts.set_job`). The job's outputs are the files on that
command line whose sidecars record the same command; they are redirected into a temporary folder (the
inputs are read where they are), the command is run with this interpreter, and each output is compared
byte for byte with the original; where bytes differ, the arrays (HDF5 datasets, checkpoint tensors) that
differ are named with their largest absolute difference.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from emprior.core.artifacts import sidecar, verify
from emprior.core.errors import ArtifactError


def _job_of(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(sidecar(path).read_text()).get("job")
    except (OSError, json.JSONDecodeError):
        return None


def _h5_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: v for k, v in f.attrs.items()}
    return arrays, attrs


def _torch_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import torch

    arrays: dict[str, np.ndarray] = {}
    other: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            arrays[prefix] = obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.numpy()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            other[prefix] = obj

    walk("", torch.load(path, map_location="cpu", weights_only=True))
    return arrays, other


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two versions of an artifact: the arrays (with their largest absolute
    difference) and the other fields; [] when nothing can be told apart beyond the bytes."""
    if a.suffix == ".h5":
        (xa, oa), (xb, ob) = _h5_arrays(a), _h5_arrays(b)
    elif a.suffix == ".pt":
        (xa, oa), (xb, ob) = _torch_arrays(a), _torch_arrays(b)
    else:
        return []
    out = []
    for name in sorted(set(xa) | set(xb)):
        if name not in xa or name not in xb:
            out.append(f"{name} (only in {'the original' if name in xa else 'the rerun'})")
        elif xa[name].shape != xb[name].shape:
            out.append(f"{name} (shape {xa[name].shape} vs {xb[name].shape})")
        elif xa[name].tobytes() != xb[name].tobytes():
            diff = np.abs(xa[name].astype(np.float64) - xb[name].astype(np.float64))
            out.append(f"{name} (max abs difference {float(np.nanmax(diff)) if diff.size else 0:.3g})")
    out += [f"{k} (not an array)" for k in sorted(set(oa) | set(ob)) if str(oa.get(k)) != str(ob.get(k))]
    return out


def rerun(artifact: str | Path, keep: str | Path | None = None) -> tuple[str, int]:
    """(report, exit status): 0 when every output of the job is byte-identical, 1 when one differs."""
    path = Path(artifact)
    record = verify(path)
    job = record.get("job") or {}
    if not job.get("args"):
        raise ArtifactError(f"{path}: its sidecar records no command (written before commands were recorded, "
                            f"or not by `python -m emprior`); rerun its Snakemake job instead")
    cwd = Path(job.get("cwd") or ".")
    if not cwd.is_dir():
        cwd = Path.cwd()
    out_dir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="emprior-rerun-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args, outputs = [], {}
    for arg in job["args"]:
        file = Path(arg) if Path(arg).is_absolute() else cwd / arg
        if not arg.startswith("-") and file.is_file() and _job_of(file) == job:
            dest = out_dir / f"{len(outputs)}_{file.name}"
            outputs[file.resolve()] = dest
            arg = str(dest)
        args.append(arg)
    if path.resolve() not in outputs:
        raise ArtifactError(f"{path}: not on the command line its sidecar records ({' '.join(job['args'])})")
    try:
        done = subprocess.run([sys.executable, "-m", "emprior", *args], cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ArtifactError(f"{path}: the rerun failed with exit status {done.returncode}: {last}")
        lines, status = [], 0
        for original, new in outputs.items():
            if original.read_bytes() == new.read_bytes():
                lines.append(f"identical: {original}")
            else:
                status = 1
                what = differences(original, new)
                lines.append(f"differs: {original}" + (f": {', '.join(what)}" if what else ""))
        return "\n".join(lines), status
    finally:
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)
