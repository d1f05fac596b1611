"""Plug-ins from outside the package: the config key ``plugins`` lists Python modules (``pkg.mod``)
or files (``path/to/file.py``, relative to the working directory) to import before the config is
validated, so that what they register (a posterior sampler, an EM method, a dataset ...) can be named
in the config. Snakemake and every job import the same list."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from emprior.core.errors import ConfigError

_LOADED: dict[str, object] = {}


def load_plugins(plugins: list[str] | None, source: str = "config") -> None:
    for i, spec in enumerate(plugins or []):
        if spec in _LOADED:
            continue
        where = f"{source}: plugins[{i}]"
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{where}: must be a module name or a .py file, got {spec!r}")
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise ConfigError(f"{where}: plug-in file {spec} not found (from {Path.cwd()})")
            name = f"emprior_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(name, None)
                raise ConfigError(f"{where}: importing {spec} failed ({type(exc).__name__}: {exc})") from None
        else:
            try:
                module = importlib.import_module(spec)
            except ImportError as exc:
                raise ConfigError(f"{where}: cannot import plug-in module {spec!r} ({exc})") from None
        _LOADED[spec] = module
