"""Several seeds of one config: each seed is its own DAG branch.

``seeds: [s_1, ..., s_n]`` (top level) runs every experiment once per seed; an experiment's own
``seeds`` (``experiments.<name>.seeds``) replaces the top-level list for that experiment. The branch of seed s is
the whole config run with ``seed: s``: its job configs carry ``seed: s`` and every random stream is
``derive_seed(s, experiment, ...)`` (:mod:`emprior.core.rng`), data and observations included. With
several seeds a branch is named ``<experiment>/seed_<s>``, so its files lie under
``<results>/<experiment>/seed_<s>/`` (data, ``<variant>/iter_<k>``, logs, benchmarks); with one seed
(or no ``seeds`` key, which means ``[seed]``) the branch is ``<experiment>`` itself and every path and
job config is what it is without ``seeds``, so an existing results folder does not rerun.

The branch name is what the rules put in ``--experiment``; :func:`split_branch` takes it apart again.
"""

from __future__ import annotations

import re
from typing import Any

from emprior.core.errors import ConfigError

BRANCH = re.compile(r"(?P<experiment>[^/]+)/seed_(?P<seed>[0-9]+)")
# the wildcard regex of a branch name (Snakefile): an experiment name, optionally /seed_<s>
BRANCH_SUFFIX = r"(/seed_[0-9]+)?"


def coerce_seeds(value: Any) -> Any:
    """``seeds`` as given on Snakemake's command line (``--config seeds=[0,1,2]`` arrives as the strings
    ['0', '1', '2'], ``seeds=3`` as 3) turned into a list of ints; anything else is left for the schema
    to reject with its own message."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list):
        return [int(v) if isinstance(v, str) and v.strip().isdigit() else v for v in value]
    return value


def seeds_of(config: dict[str, Any], experiment: str | None = None) -> list[int]:
    """The seeds of ``experiment`` (its own ``seeds``, else the top-level ``seeds``, else ``[seed]``)."""
    own = (config.get("experiments", {}).get(experiment) or {}).get("seeds") if experiment else None
    seeds = own or config.get("seeds")
    return [int(s) for s in seeds] if seeds else [int(config["seed"])]


def check_seeds(config: dict[str, Any], source: str = "config") -> None:
    """Cross-field rules on ``seeds`` that the schema cannot express: no variant may be named like a
    branch folder (``seed_<s>``), which would make ``<experiment>/seed_<s>/...`` ambiguous."""
    for name, exp in config.get("experiments", {}).items():
        if len(seeds_of(config, name)) < 2:
            continue
        for vname in exp.get("variants", {}):
            if re.fullmatch(r"seed_[0-9]+", vname):
                raise ConfigError(f"{source}: experiments.{name}.variants.{vname}: a variant may not be named "
                                  f"seed_<s> when several seeds are run (seeds: {seeds_of(config, name)})")


def branches(config: dict[str, Any], experiment: str) -> list[tuple[str, int]]:
    """(branch name, seed) of each seed of ``experiment``: ``[(experiment, seed)]`` for one seed."""
    seeds = seeds_of(config, experiment)
    if len(seeds) == 1:
        return [(experiment, seeds[0])]
    return [(f"{experiment}/seed_{s}", s) for s in seeds]


def split_branch(name: str) -> tuple[str, int | None]:
    """(experiment, seed) of a branch name; seed None for a plain experiment name (one seed)."""
    m = BRANCH.fullmatch(name)
    return (m["experiment"], int(m["seed"])) if m else (name, None)


def branch_seed(config: dict[str, Any], name: str) -> int:
    """The seed of branch ``name``: its ``seed_<s>``, else the config's only seed."""
    experiment, seed = split_branch(name)
    return seed if seed is not None else seeds_of(config, experiment)[0]


def seeded(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """``config`` as one seed's branch sees it: ``seed`` set, every ``seeds`` dropped (shallow copies)."""
    out = {k: v for k, v in config.items() if k != "seeds"}
    out["seed"] = int(seed)
    if "experiments" in config:
        out["experiments"] = {n: {k: v for k, v in e.items() if k != "seeds"} for n, e in config["experiments"].items()}
    return out
