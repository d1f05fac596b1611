"""Markdown pipe tables, the one writer behind every table's .md file."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import pandas as pd


def cell(v: Any, digits: int, missing: str = "–") -> str:
    """A number with ``digits`` decimals; None, NA, NaN and inf as ``missing``."""
    if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
        return missing
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def pipe_table(heads: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a markdown table: header, rule, one line per row of already formatted cells."""
    return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def frame_rows(df: pd.DataFrame, keys: Sequence[tuple[str, int]]) -> list[list[str]]:
    """``df``'s rows as cells of the columns ``keys`` (name, decimals)."""
    return [[cell(r[k], d) for k, d in keys] for _, r in df.iterrows()]
