"""Look-ups of one experiment / variant section of a loaded config, with one-line errors.

In ``core`` (not ``config.loading``) so that :class:`emprior.core.job.Job` needs nothing above ``core``:
``config.loading`` validates through the method plug-ins, which refer to ``Job``."""

from __future__ import annotations

from typing import Any

from emprior.core.errors import ConfigError


def experiment(config: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        return config["experiments"][name]
    except KeyError:
        raise ConfigError(f"config: experiments.{name}: no such experiment "
                          f"(have: {', '.join(config.get('experiments', {}))})") from None


def variant(config: dict[str, Any], exp_name: str, name: str) -> dict[str, Any]:
    exp = experiment(config, exp_name)
    try:
        return exp["variants"][name]
    except KeyError:
        raise ConfigError(f"config: experiments.{exp_name}.variants.{name}: no such variant "
                          f"(have: {', '.join(exp['variants'])})") from None
