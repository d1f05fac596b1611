"""Operator factory and (de)serialisation: draw an operator from its options, rebuild it from the
arrays and JSON attrs of an HDF5 file (:mod:`emprior.data.observations`), and materialise one
observation's dense system for exact posteriors."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emprior.core.errors import ConfigError
from emprior.operators.base import OPERATORS, LinearOperator, OperatorError, as_shape


def _kind_class(kind: Any) -> type[LinearOperator]:
    if not isinstance(kind, str) or kind not in OPERATORS:
        raise OperatorError(f"unknown operator kind {kind!r}; expected one of {sorted(OPERATORS.names())}")
    return OPERATORS.get(kind)


def make_operator(kind: str, n: int, x_shape: Any, noise_std: float, rng: np.random.Generator,
                  **options: Any) -> LinearOperator:
    """Draw random parameters of ``n`` observations of operator ``kind`` (see each class's ``draw``).

    ``options`` fill the kind's options dataclass; a misspelled one is a one-line OperatorError naming
    it and the allowed ones."""
    cls = _kind_class(kind)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise OperatorError(f"make_operator: n must be a positive integer, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise OperatorError(f"make_operator: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    try:
        opts = OPERATORS.options(kind, options)
    except ConfigError as exc:
        raise OperatorError(str(exc)) from None  # a ValueError, as every bad operator input
    return cls.draw(int(n), as_shape(x_shape), noise_std, rng, opts)


def _decode_attrs(attrs: Any) -> dict[str, Any]:
    if isinstance(attrs, (str, bytes)):
        try:
            attrs = json.loads(attrs)
        except json.JSONDecodeError as exc:
            raise OperatorError(f"operator attrs are not valid JSON ({exc})") from None
    if not isinstance(attrs, dict) or "kind" not in attrs:
        raise OperatorError(f"operator attrs must be a dict with a 'kind', got {type(attrs).__name__}")
    return attrs


def operator_from_arrays(params: dict[str, np.ndarray], attrs: dict[str, Any] | str) -> LinearOperator:
    """Rebuild an operator from :meth:`LinearOperator.params` and :meth:`LinearOperator.attrs`
    (``attrs`` may also be their JSON string, as stored in an HDF5 attribute)."""
    attrs = _decode_attrs(attrs)
    return _kind_class(attrs["kind"]).from_params({k: np.asarray(v) for k, v in params.items()}, attrs)


def save_operator_arrays(op: LinearOperator) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(datasets, attrs) for an HDF5 file: write each dataset as ``op/<name>`` and attrs as the
    JSON attribute ``operator`` (see :mod:`emprior.data.observations`); :func:`load_operator_arrays`
    inverts it."""
    return op.params(), op.attrs()


def load_operator_arrays(datasets: dict[str, np.ndarray], attrs: dict[str, Any] | str,
                         prefix: str = "") -> LinearOperator:
    """Inverse of :func:`save_operator_arrays`; with ``prefix="op/"`` pick ``op/<name>`` datasets out
    of a whole file's datasets."""
    params = {k[len(prefix):]: v for k, v in datasets.items() if k.startswith(prefix)}
    return operator_from_arrays(params, attrs)


def measured_system(op: LinearOperator, i: int, y: Tensor, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Observation i as a dense system on its measured coordinates: (A_i's rows (m_i, d), y_i (m_i,)).

    Columns are A_i e_j (d applications of the operator: for exact posteriors at small d). Unmeasured
    coordinates of y (masked pixels) are exact zeros with zero rows in A: dropping them leaves p(x | y)
    unchanged and keeps A C A^T + Sigma_y well conditioned.
    """
    op_i = op[i]
    d = math.prod(op.x_shape)
    basis = torch.eye(d, dtype=dtype).reshape(d, *op.x_shape)
    A = op_i.A(basis).reshape(d, -1).T
    y_i = y[i].reshape(-1).to(dtype)
    measured = op_i.measured(basis)
    if measured is not None:
        keep = torch.broadcast_to(measured, (1, *op.y_shape)).reshape(-1) > 0
        A, y_i = A[keep], y_i[keep]
    return A, y_i
