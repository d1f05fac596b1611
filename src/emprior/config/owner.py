"""Which config a results folder belongs to: ``<results>/.config/owner.json``.

A run claims its results folder when it starts (Snakemake's ``onstart``: not in a dry run, not in the
jobs' own Snakemake processes) by recording its config file (the first one: later ``--configfiles``
overlay values on it). A later run of *another* config file into the same folder would replace the
first config's finished artifacts (both presets have an experiment ``manifold``, and the tables and
figures share names), so it stops while the Snakefile is parsed, before any job, with one line naming
the folder and the config that made it, unless allowed with ``--config allow_foreign_results=true`` or
``EMPRIOR_ALLOW_FOREIGN_RESULTS=1``. Editing a value of the same config file (or overlaying one) is not
foreign: Snakemake reruns the jobs whose configs changed, as always.

The check reads one small file: it adds nothing measurable to the parse.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from emprior.core.errors import ConfigError

OWNER = Path(".config") / "owner.json"
FLAG = "allow_foreign_results"
ENV = "EMPRIOR_ALLOW_FOREIGN_RESULTS"


def config_source(configfiles: Iterable[str | os.PathLike], basedir: str | os.PathLike) -> str:
    """The run's first config file (the preset; later files overlay values on it, like an edit),
    relative to the workflow folder ``basedir`` when it is inside it (so that the same file given as an
    absolute or a relative path is the same source)."""
    base = Path(basedir).resolve()
    p = Path(next(iter(configfiles))).resolve()
    return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)


def allowed(config: dict[str, Any]) -> bool:
    """Pop the ``allow_foreign_results`` flag from ``config`` (it is no config key: the job configs must
    not depend on it) and say whether it, or the environment variable, allows a foreign folder."""
    flag = config.pop(FLAG, False)
    env = os.environ.get(ENV, "")
    return str(flag).lower() in ("1", "true", "yes") or env.lower() in ("1", "true", "yes")


def owner_of(results: str | os.PathLike) -> str | None:
    try:
        return str(json.loads((Path(results) / OWNER).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_owner(results: str | os.PathLike, source: str, allow: bool = False) -> None:
    """Raise a one-line ConfigError if ``results`` was claimed by other config files than ``source``."""
    owner = owner_of(results)
    if owner is None or owner == source or allow:
        return
    raise ConfigError(f"results folder {results}/ holds artifacts made by {owner}; this run ({source}) would "
                      f"replace them: set another `results:` (or --config results=DIR), or allow it with "
                      f"--config {FLAG}=true")


def claim(results: str | os.PathLike, source: str) -> None:
    """Record ``source`` as the owner of ``results`` (atomically; the umask's mode)."""
    path = Path(results) / OWNER
    if owner_of(results) == source:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".owner.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"config": source}) + "\n")
    tmp.replace(path)
