"""``projection``: dense random projections A_i in R^{m x d} (the manifold experiment, Sec. 5.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emprior.operators.base import (LinearOperator, OperatorError, as_shape, draw_option, fmt_shape, positive_int,
                                    register)


@dataclass(frozen=True)
class ProjectionOptions:
    m: int = draw_option(2, minimum=1, doc="rows of each A_i (measurements per observation)")


@register("projection", ProjectionOptions)
class ProjectionOperator(LinearOperator):
    """Dense A_i in R^{m x d} (x flattened to d = prod(x_shape)), y_shape (m,).

    Rows are drawn uniformly on the unit sphere S^{d-1} by normalising standard Gaussian vectors
    (Sec. 5.1: m = 2, d = 5).
    """

    param_names = ("A",)

    def _check_params(self) -> None:
        A = self._params["A"]
        d = math.prod(self.x_shape)
        if A.ndim != 3 or A.shape[2] != d or A.shape[1] < 1:
            raise OperatorError(f"{self.kind}: parameter 'A' must have shape (n, m, {d}), got {fmt_shape(A.shape)}")
        if A.dtype.kind != "f" or not np.isfinite(A).all():
            raise OperatorError(f"{self.kind}: parameter 'A' must be finite floats")

    def _y_shape(self):
        return (int(self._params["A"].shape[1]),)

    def _apply(self, x, p):
        return (p["A"] @ x.reshape(x.shape[0], -1, 1)).squeeze(-1)

    def _adjoint(self, y, p):
        x = (p["A"].transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
        return x.reshape(x.shape[0], *self.x_shape)

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, opts: ProjectionOptions):
        m = positive_int(cls.kind, "m", opts.m)
        d = math.prod(as_shape(x_shape))
        A = rng.standard_normal((n, m, d))
        A /= np.linalg.norm(A, axis=-1, keepdims=True)
        return cls(x_shape, noise_std, {"A": A}, {"m": m})
