"""Atomic, checksummed artifacts.

Every artifact ``X`` is written to a temporary file in the same folder and renamed into place, so a
killed job never leaves a half-written ``X``. Next to it lands ``X.prov.json`` holding its sha256,
size, provenance and the job that wrote it (command line and job config, :func:`job_record`);
:func:`verify` checks a file against it before anything is loaded, and every failure is a one-line
:class:`~emprior.core.errors.ArtifactError` naming the file and the rule that makes it.

Both files are written under temporary names and renamed sidecar first, artifact last, so an artifact
never exists without its own sidecar (a job killed between the renames leaves no artifact: Snakemake
reruns it). Files get the mode the process umask gives (0644 under 022, 0664 under 002), like any file
the shell creates; a full disk or quota is one :class:`~emprior.core.errors.DiskFullError` line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from emprior.core.digest import sha256_file
from emprior.core.errors import ArtifactError, DiskFullError
from emprior.core.storage import DEFAULT as DEFAULT_STORAGE
from emprior.core.storage import SOURCE_DTYPE_ATTR, Storage, dataset_kwargs, restore, stored_array

SIDE = ".prov.json"


def sidecar(path: str | Path) -> Path:
    return Path(str(path) + SIDE)


def umask() -> int:
    """The process umask (read from /proc where the kernel shows it, so that nothing is changed)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the umask (mkstemp's 0600 would keep results
    private to their owner on a shared cluster)."""
    return 0o666 & ~umask()


def _temporary(path: Path) -> Path:
    """A new empty file ``.<name>.*.tmp`` next to ``path``, with the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, file_mode())
    os.close(fd)
    return Path(tmp)


def _remove_stale(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a job killed with SIGKILL
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp_path = _temporary(path)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


# ---------------------------------------------------------------------------------------------
# the job that writes: recorded in every sidecar (``python -m emprior rerun`` reads it back)
# ---------------------------------------------------------------------------------------------

_JOB: dict[str, Any] = {}


def set_job(args: list[str], config_file: str | None) -> None:
    """Record the command of this process (``python -m emprior`` ``args``) and its job config.

    The job config files are named ``results/.config/<config_digest[:16]>.json`` by the Snakefile
    (the name is on every job's command line, so it is kept); ``config_file`` is recorded as given.
    """
    _JOB.clear()
    _JOB.update({"argv": list(getattr(sys, "orig_argv", sys.argv)), "args": list(args),
                 "config_file": config_file, "cwd": os.getcwd()})


def job_record() -> dict[str, Any]:
    """What :func:`set_job` recorded (empty when the writer was called from Python, not the CLI)."""
    return dict(_JOB)


# ---------------------------------------------------------------------------------------------
# a full disk or quota
# ---------------------------------------------------------------------------------------------

_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# HDF5 reports the C errno inside the message of a RuntimeError/OSError, not as exc.errno
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def disk_full_errno(exc: BaseException) -> int | None:
    """ENOSPC or EDQUOT if ``exc`` (or what caused it) is a full disk or quota, else None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc.errno
        for match in _HDF5_ERRNO.finditer(str(exc)):
            if int(match.group(1)) in _FULL:
                return int(match.group(1))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged user may still write on the filesystem of ``folder`` (a quota may allow
    fewer: it is not visible here)."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _disk_full(path: Path, code: int, needed: int | None, written: int) -> DiskFullError:
    need = f"{needed} bytes" if needed is not None else f"more than the {written} bytes written"
    return DiskFullError(f"{path}: {_FULL[code]} (errno {errno.errorcode[code]}) while writing it: it needs {need}, "
                         f"{free_bytes(path.parent)} bytes are free in {path.parent}/; nothing was written")


# ---------------------------------------------------------------------------------------------
# artifact + sidecar
# ---------------------------------------------------------------------------------------------

def _sidecar_text(path: Path, tmp: Path, provenance: dict[str, Any] | None,
                  runtime: dict[str, Any] | None) -> str:
    record = {"file": path.name, "sha256": sha256_file(tmp), "size": tmp.stat().st_size,
              "provenance": provenance or {}, "runtime": runtime or {}}
    job = job_record()
    if job:
        record["job"] = job
    # how this process did its arithmetic (processor, dispatch pins): in the sidecar only, so the artifact's
    # bytes do not depend on the machine (emprior.core.reproducibility)
    from emprior.core.reproducibility import record as arithmetic

    record["arithmetic"] = arithmetic()
    return json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"


def write_artifact(path: str | Path, writer: Callable[[Path], None],
                   provenance: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
                   size: int | None = None) -> Path:
    """Run ``writer(tmp_path)``, then move the result to ``path`` and record its checksum.

    ``runtime`` (timings, resume points: things that differ between runs of the same job) goes to the
    sidecar only, so the artifact itself is bit-identical for the same config and seed. ``size`` (the
    bytes the artifact needs, when known) only goes into a disk-full message.

    Order: artifact and sidecar are written and synced under temporary names; then the old artifact is
    removed, the sidecar renamed, the artifact renamed last. A failure before leaves the old pair as it
    was; a kill between the renames leaves a sidecar without artifact, a missing output. A full disk
    or quota raises :class:`DiskFullError` (one line: file, bytes needed, bytes free) with both
    temporary files removed.
    """
    path = Path(path)
    _remove_stale(path)
    _remove_stale(sidecar(path))
    tmps: list[Path] = []
    try:
        tmp = _temporary(path)
        tmps.append(tmp)
        writer(tmp)
        _fsync(tmp)
        side_tmp = _temporary(sidecar(path))
        tmps.append(side_tmp)
        side_tmp.write_text(_sidecar_text(path, tmp, provenance, runtime))
        _fsync(side_tmp)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.replace(side_tmp, sidecar(path))
        os.replace(tmp, path)
    except BaseException as exc:
        written = sum(t.stat().st_size for t in tmps if t.exists())
        for t in tmps:
            with contextlib.suppress(FileNotFoundError):
                t.unlink()
        code = disk_full_errno(exc)
        if code is not None:
            raise _disk_full(path, code, size, written) from None
        raise
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


_CORE_BLOCK = 4 << 20  # growth step of the in-memory HDF5 file (bytes)


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

    def image() -> bytes:
        # Built in memory and written by Python: HDF5 hitting a full disk itself leaves its file ids
        # unclosable and crashes the process (segfault at exit); the image is byte-identical to the file
        # the sec2 driver writes.
        with h5py.File(f"{path}.in-memory", "w", driver="core", backing_store=False, block_size=_CORE_BLOCK,
                       track_order=True) as f:
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
            f.flush()
            return f.id.get_file_image()

    data = image()
    return write_artifact(path, lambda tmp: tmp.write_bytes(data), provenance, runtime, size=len(data))


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

    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    return write_artifact(path, lambda tmp: tmp.write_bytes(data), provenance, runtime, size=len(data))


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
    return write_artifact(path, lambda tmp: tmp.write_text(text), provenance, runtime, size=len(text.encode()))


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
    return write_artifact(path, lambda tmp: tmp.write_text(text), provenance, size=len(text.encode()))


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
