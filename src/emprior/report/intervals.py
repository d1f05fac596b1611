"""Mean and confidence interval over seeds (Table 1, Fig. 4).

With n seeds' values v_1..v_n (independent runs of the same config, one per seed), the two-sided
Student-t interval at level 1 - alpha is

    mean ± t_{1-alpha/2, n-1} * s / sqrt(n),    s^2 = sum_i (v_i - mean)^2 / (n - 1),

exact when the v_i are normal, the usual choice for a handful of seeds (t_{0.975, 1} = 12.706,
t_{0.975, 2} = 4.303: two or three seeds give wide intervals). One value has no interval (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95


def t_quantile(q: float, dof: int) -> float:
    """The q quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(q, dof))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width) of the two-sided Student-t interval of the finite ``values``; the
    half-width is NaN for fewer than two values, and both are NaN for none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan
    half = t_quantile(0.5 + level / 2, v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, half
