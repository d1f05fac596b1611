"""Atomic, checksummed artifacts.

Every artifact ``X`` is written to a temporary file in the same folder and renamed into place, so a
killed job never leaves a half-written ``X``. Next to it lands ``X.prov.json`` holding its sha256,
size and provenance; :func:`verify` checks a file against it before anything is loaded, and every
failure is a one-line :class:`~emprior.core.errors.ArtifactError` naming the file and the rule that makes
it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from emprior.core.digest import sha256_file
from emprior.core.errors import ArtifactError
from emprior.core.storage import DEFAULT as DEFAULT_STORAGE
from emprior.core.storage import SOURCE_DTYPE_ATTR, Storage, dataset_kwargs, restore, stored_array

SIDE = ".prov.json"


def sidecar(path: str | Path) -> Path:
    return Path(str(path) + SIDE)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a job killed with SIGKILL
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _write_sidecar(path: Path, provenance: dict[str, Any] | None, runtime: dict[str, Any] | None) -> None:
    record = {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size,
              "provenance": provenance or {}, "runtime": runtime or {}}
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def write_artifact(path: str | Path, writer: Callable[[Path], None],
                   provenance: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None) -> Path:
    """Run ``writer(tmp_path)``, then move the result to ``path`` and record its checksum.

    ``runtime`` (timings, resume points: things that differ between runs of the same job) goes to the
    sidecar only, so the artifact itself is bit-identical for the same config and seed.

    The sidecar is written after the rename; a job killed in between leaves an artifact with no
    sidecar, which :func:`verify` rejects, so Snakemake's rerun rewrites both.
    """
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        sidecar(path).unlink()
    with atomic_path(path) as tmp:
        writer(tmp)
    _write_sidecar(path, provenance, runtime)
    return path


def verify(path: str | Path, rule: str | None = None) -> dict[str, Any]:
    """Check ``path`` against its sidecar; return the sidecar's record."""
    path = Path(path)
    made_by = f" (made by rule '{rule}')" if rule else ""
    if not path.exists():
        raise ArtifactError(f"{path}: missing{made_by}")
    side = sidecar(path)
    if not side.exists():
        raise ArtifactError(f"{path}: no checksum sidecar {side.name}; the job that wrote it did not "
                            f"finish{made_by}; delete it and rerun")
    try:
        record = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{side}: corrupt sidecar ({exc}){made_by}") from None
    digest = sha256_file(path)
    if digest != record.get("sha256"):
        raise ArtifactError(f"{path}: checksum mismatch (file is truncated or was modified; "
                            f"expected {str(record.get('sha256'))[:12]}, got {digest[:12]}){made_by}")
    return record


def runtime_of(path: str | Path) -> dict[str, Any]:
    """The run-dependent record (timings, resume points) kept in an artifact's sidecar."""
    try:
        return json.loads(sidecar(path).read_text()).get("runtime", {}) or {}
    except (OSError, json.JSONDecodeError):
        return {}


def rule_from_sidecar(path: str | Path) -> str | None:
    try:
        return json.loads(sidecar(path).read_text()).get("provenance", {}).get("rule")
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------------------------

def _attr_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _is_tensor(value: Any) -> bool:
    # torch is imported lazily (the gather job never needs it): without torch loaded, nothing is a tensor.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def save_h5(path: str | Path, datasets: dict[str, Any], attrs: dict[str, Any] | None = None,
            provenance: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
            storage: Storage | None = None, samples: tuple[str, ...] = ()) -> Path:
    """Write ``datasets`` (name -> array; names may contain '/' for groups) and ``attrs``.

    Every dataset is chunked and compressed as ``storage`` says (default: lossless gzip,
    :mod:`emprior.core.storage`); the datasets named in ``samples`` (posterior / prior samples) are
    also stored in its ``dtype`` (float16 is lossy: marked on the dataset, read back by
    :func:`load_h5` in the dtype it came from). Provenance goes both into the file's attributes
    (``provenance`` as JSON, with the storage record under ``storage``) and the sidecar.
    """
    storage = storage or DEFAULT_STORAGE
    if provenance is not None:
        provenance = {**provenance, "storage": {**storage.record(),
                                                "samples": [n for n in datasets if n in samples]}}

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w", track_order=True) as f:
            for name, value in datasets.items():
                if _is_tensor(value):
                    value = value.detach().cpu().numpy()
                value = np.asarray(value)
                data = stored_array(value, storage, sample=name in samples)
                dset = f.create_dataset(name, data=data, **dataset_kwargs(data, storage))
                if data.dtype != value.dtype:
                    dset.attrs[SOURCE_DTYPE_ATTR] = str(value.dtype)
            for key, value in (attrs or {}).items():
                f.attrs[key] = _attr_value(value)
            if provenance is not None:
                f.attrs["provenance"] = json.dumps(provenance, sort_keys=True, default=str)

    return write_artifact(path, writer, provenance, runtime)


def _checked(path: str | Path, rule: str | None, check: bool) -> tuple[Path, str]:
    """Verify ``path`` against its sidecar (unless ``check`` is off); the " (made by rule ...)" suffix."""
    path = Path(path)
    rule = rule or rule_from_sidecar(path)
    if check:
        verify(path, rule)
    return path, f" (made by rule '{rule}')" if rule else ""


def load_h5(path: str | Path, rule: str | None = None, check: bool = True
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Verify and read every dataset and attribute of an HDF5 artifact (a dataset stored in a lossy
    dtype comes back in the dtype it was written from, e.g. float16 -> float32)."""
    path, made_by = _checked(path, rule, check)
    try:
        with h5py.File(path, "r") as f:
            data: dict[str, np.ndarray] = {}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    data[name] = restore(obj[()], obj.attrs)

            f.visititems(visit)
            attrs = {}
            for k, v in f.attrs.items():
                if isinstance(v, str):
                    try:
                        v = json.loads(v)
                    except json.JSONDecodeError:
                        pass
                attrs[k] = v.item() if isinstance(v, np.generic) else v
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]}){made_by}") from None
    return data, attrs


# ---------------------------------------------------------------------------------------------
# torch checkpoints and JSON
# ---------------------------------------------------------------------------------------------

def save_torch(path: str | Path, obj: dict[str, Any], provenance: dict[str, Any] | None = None,
               runtime: dict[str, Any] | None = None) -> Path:
    """Save a checkpoint made of tensors, numbers, strings, lists and dicts (weights_only-safe)."""
    import torch

    payload = dict(obj)
    if provenance is not None:
        payload["provenance"] = json.dumps(provenance, sort_keys=True, default=str)

    def writer(tmp: Path) -> None:
        buf = io.BytesIO()
        torch.save(payload, buf)
        tmp.write_bytes(buf.getvalue())

    return write_artifact(path, writer, provenance, runtime)


def load_torch(path: str | Path, rule: str | None = None, check: bool = True) -> dict[str, Any]:
    import torch

    path, made_by = _checked(path, rule, check)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ArtifactError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]}){made_by}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: checkpoint is a {type(obj).__name__}, expected a dict{made_by}")
    return obj


def save_json(path: str | Path, obj: Any, provenance: dict[str, Any] | None = None,
              runtime: dict[str, Any] | None = None) -> Path:
    payload = obj
    if provenance is not None and isinstance(obj, dict):
        payload = {**obj, "provenance": provenance}
    text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n"
    return write_artifact(path, lambda tmp: tmp.write_text(text), provenance, runtime)


def load_json(path: str | Path, rule: str | None = None, check: bool = True) -> Any:
    path = Path(path)
    rule = rule or rule_from_sidecar(path)
    if check:
        verify(path, rule)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: invalid JSON ({exc})") from None


def save_text(path: str | Path, text: str, provenance: dict[str, Any] | None = None) -> Path:
    return write_artifact(path, lambda tmp: tmp.write_text(text), provenance)


def save_figure(path: str | Path, fig: Any, provenance: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format from the target's suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    kwargs.setdefault("dpi", 120)
    # Fixed metadata keeps PNGs bit-identical between runs.
    kwargs.setdefault("metadata", {"Software": None} if fmt == "png" else None)
    return write_artifact(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs), provenance)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if _is_tensor(value):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
