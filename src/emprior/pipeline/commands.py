"""The registry of ``python -m emprior`` commands: one pipeline function per Snakemake rule.

A command is a function registered with :func:`command`; its signature is its command line
(:mod:`emprior.pipeline.cli` builds the parser from it): a first parameter ``job`` means
``--config`` plus the ids named in ``ids`` (``--experiment``, ``--variant``, ``--iteration``);
``name: str`` is a required ``--name``, ``name: str | None = None`` an optional one, ``name: int``
an integer, and ``name: list[str]`` the positional file list.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

IDS = ("experiment", "variant", "iteration")


@dataclass(frozen=True)
class Command:
    name: str
    func: Callable[..., Any]
    ids: tuple[str, ...]
    torch: bool  # False for commands that only move arrays: importing torch would be most of their run time
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, ids: tuple[str, ...] = (), torch: bool = True) -> Callable[[Callable], Callable]:
    unknown = set(ids) - set(IDS)
    if unknown:
        raise ValueError(f"command {name}: unknown ids {sorted(unknown)}")

    def deco(func: Callable) -> Callable:
        if name in COMMANDS and COMMANDS[name].func.__qualname__ != func.__qualname__:
            raise ValueError(f"command {name!r} is defined twice")
        # the docstring's first paragraph, on one line: `--help` shows whole sentences
        doc = " ".join((inspect.getdoc(func) or "").split("\n\n")[0].split())
        COMMANDS[name] = Command(name, func, tuple(i for i in IDS if i in ids), torch, doc)
        return func

    return deco
