"""Provenance attached to every artifact: config digest, seed, package versions, git commit."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import emprior


def config_digest(config: Any) -> str:
    """sha256 of the canonical JSON of a config (sorted keys), so equal configs share a digest."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        )
        if commit != "unknown" and dirty.returncode == 0 and dirty.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _torch_version() -> str:
    """torch.__version__ (with its build tag, e.g. 2.14.1+cu130) without importing torch when a job
    does not use it: it is the line ``__version__ = '...'`` of the installed torch/version.py."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        dist = importlib.metadata.distribution("torch")
        text = Path(str(dist.locate_file("torch/version.py"))).read_text()
        match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
        return match.group(1) if match else dist.version
    except (importlib.metadata.PackageNotFoundError, OSError):
        import torch as _torch

        return str(_torch.__version__)


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    import numpy

    versions = {"python": platform.python_version(), "emprior": emprior.__version__,
                "torch": _torch_version(), "numpy": numpy.__version__}
    # Read from the installed metadata: importing POT, scikit-learn or Snakemake just for a version
    # string cost every job several seconds.
    for key, dist in (("h5py", "h5py"), ("snakemake", "snakemake"), ("ot", "POT"), ("skimage", "scikit-image"),
                      ("sklearn", "scikit-learn")):
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # optional packages only add information
            pass
    return versions


def make_provenance(config: Any = None, seed: int | None = None, rule: str | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The provenance record. Deterministic for a given code state (no timestamps), so that
    artifacts of the same config and seed are bit-identical."""
    prov: dict[str, Any] = {
        "config_digest": config_digest(config) if config is not None else None,
        "seed": seed,
        "rule": rule,
        "git_commit": git_commit(),
        "versions": package_versions(),
    }
    prov.update(extra)
    return prov
