"""Which EM iterations are evaluated (get ``prior_samples.h5`` and ``metrics.json``): the experiment's
``evaluate.iterations``.

- ``all`` (default): every iteration of the variant, 0 (the initial prior) or 1 to K -- Fig. 4's curve;
- ``final``: iteration K only;
- a list of k: those, plus K. The final iteration is always evaluated, since Table 1 reads it.

A variant without an initial prior (no ``iter_000``) skips a listed 0. Table 1 also asks for iteration
1's metrics.json (its E-step check), whatever the selection.
"""

from __future__ import annotations

from typing import Any

from emprior.core.errors import ConfigError

MODES = ("all", "final")


def evaluated_iterations(exp: dict[str, Any], first: int = 0) -> list[int]:
    """The iterations k >= ``first`` of the experiment ``exp`` that are evaluated, ascending."""
    last = int(exp["iterations"])
    sel = exp["evaluate"].get("iterations", "all")
    if sel == "all":
        return list(range(first, last + 1))
    if sel == "final":
        return [last]
    return sorted({int(k) for k in sel if int(k) >= first} | {last})


def check_iterations(exp: dict[str, Any], where: str) -> None:
    """One-line :class:`ConfigError` unless ``evaluate.iterations`` is all, final or a list of k <= K
    (the experiment's ``iterations``); the schema has checked the list's type."""
    sel = exp["evaluate"].get("iterations", "all")
    if isinstance(sel, str) and sel not in MODES:
        raise ConfigError(f"{where}.evaluate.iterations: must be {' or '.join(MODES)} or a list of iterations, "
                          f"got {sel!r}")
    if isinstance(sel, list):
        bad = [k for k in sel if k > exp["iterations"]]
        if bad:
            raise ConfigError(f"{where}.evaluate.iterations: {bad[0]} is out of range 0..{exp['iterations']} "
                              f"(the experiment's iterations)")
