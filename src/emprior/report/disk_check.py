"""Before a run: the planned disk use of the config (:mod:`emprior.report.disk`) against the free
space of its results folder. A shortfall is one warning line, not a failure (the figures are before
compression, so the run may well fit; a scratch quota is not visible to statvfs).

The plan imports torch (the networks' sizes, on the meta device), so it is computed once per job config
by ``python -m emprior disk-check`` and kept in ``<results>/.config/disk-plan-<name>.json``; Snakemake's
``onstart`` then reads that file in its own process (:func:`onstart_warning`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from emprior.report.disk import human


def cache_path(results: str | os.PathLike, job_config: str | os.PathLike) -> Path:
    return Path(results) / ".config" / f"disk-plan-{Path(job_config).stem}.json"


def planned_bytes(config: dict[str, Any]) -> int:
    """The bytes of every artifact the config plans, as stored before compression."""
    from emprior.report.disk import plan

    return sum(item.total_stored for item in plan(config))


def existing_bytes(results: str | os.PathLike) -> int:
    """The bytes already in the results folder (artifacts of an earlier, partial run count as done)."""
    total = 0
    for root, _, files in os.walk(results):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def free_bytes(results: str | os.PathLike) -> int:
    folder = Path(results)
    while not folder.exists():  # the folder may not exist yet: its filesystem is its parent's
        folder = folder.parent
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def warning(results: str | os.PathLike, planned: int) -> str | None:
    """One line when ``planned`` bytes (less those already there) exceed the free space, else None."""
    have = existing_bytes(results) if Path(results).exists() else 0
    need, free = max(planned - have, 0), free_bytes(results)
    if need <= free:
        return None
    return (f"warning: results folder {results}/ may run out of disk: the config's artifacts need up to "
            f"{human(need)} more (before compression; {human(have)} are there), {human(free)} are free "
            f"(`python -m emprior disk-plan --config ...` lists them)")


def write_cache(results: str | os.PathLike, job_config: str | os.PathLike, planned: int) -> None:
    path = cache_path(results, job_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"planned_bytes": planned}) + "\n")
    tmp.replace(path)


def onstart_warning(results: str, job_config: str, timeout: float = 120) -> None:
    """Print the warning (stderr) if any; never raises: the check must not stop a run."""
    try:
        cached = cache_path(results, job_config)
        if not cached.exists():
            subprocess.run([sys.executable, "-m", "emprior", "disk-check", "--config", str(job_config)],
                           timeout=timeout, check=False)
            return
        line = warning(results, int(json.loads(cached.read_text())["planned_bytes"]))
        if line:
            print(line, file=sys.stderr)
    except Exception:  # noqa: BLE001 - a failed estimate is no reason to stop (or slow) a run
        return
