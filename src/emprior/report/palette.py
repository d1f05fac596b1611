"""One colour and one marker per method, the same in every figure of the suite.

Keys are what a figure compares: an EM method (``diem`` with its E-step covariance, ``emdiffusion``,
``diffem``, ``ambient``), a posterior sampler (``mmps``, ``dps``, ``pigdm``, ``diffpir``, ``tmpd``,
``exact``) or one of Fig. 2's covariance estimates (the DiEM covariances: ``tweedie`` is the exact
V[x | x_t]; and ``prior``: the Gaussian-prior heuristic (Sigma_x^-1 + Sigma_t^-1)^-1). A DiEM variant and the covariance it uses share a style (the tweedie E-step and the tweedie
curve of Fig. 2 are one colour). Colours are seaborn's colour-blind palette; an unknown key gets a
colour and marker of its own, fixed by its name (not by the order in which figures meet it).
"""

from __future__ import annotations

import hashlib
from typing import Any

_COLORBLIND = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494",
               "#ece133", "#56b4e9"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]

STYLES: dict[str, tuple[str, str]] = {
    # EM methods (Table 1 rows) and Fig. 2's covariances
    "diem:tweedie": (_COLORBLIND[0], "o"),
    "diem:inv": (_COLORBLIND[1], "s"),
    "diem:sigma_t": (_COLORBLIND[2], "^"),
    "diem:prior": ("#000000", "*"),        # Fig. 2's Gaussian-prior heuristic (Sigma_x^-1 + Sigma_t^-1)^-1
    "emdiffusion": (_COLORBLIND[3], "D"),
    "diffem": (_COLORBLIND[4], "v"),
    "ambient": (_COLORBLIND[5], "P"),
    # posterior samplers (Tables 4 and 5)
    "mmps": (_COLORBLIND[0], "o"),
    "dps": (_COLORBLIND[3], "D"),
    "pigdm": (_COLORBLIND[6], "X"),
    "diffpir": (_COLORBLIND[7], "<"),
    "tmpd": (_COLORBLIND[9], ">"),
    "exact": ("#000000", "*"),
}


def key_of(method: str, covariance: str | None = None) -> str:
    """The style key of an EM method (DiEM: with its covariance) or of a sampler / covariance name."""
    method = str(method).lower()
    if method == "diem":
        return f"diem:{covariance or 'tweedie'}"
    if method in ("tweedie", "inv", "sigma_t", "prior"):
        return f"diem:{method}"
    return method


def style(key: str) -> dict[str, Any]:
    """``{"color": ..., "marker": ...}`` for a key of :func:`key_of`."""
    if key in STYLES:
        color, marker = STYLES[key]
    else:
        h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        color, marker = _COLORBLIND[h % len(_COLORBLIND)], _MARKERS[(h // 97) % len(_MARKERS)]
    return {"color": color, "marker": marker}


def variant_key(variant_cfg: dict[str, Any]) -> str:
    """The style key of a variant's config (``method`` and, for DiEM, ``posterior.covariance``)."""
    post = variant_cfg.get("posterior") or {}
    return key_of(variant_cfg.get("method", "?"), post.get("covariance") if isinstance(post, dict) else None)
