"""``identity``: A = I (denoising)."""

from __future__ import annotations

from emprior.operators.base import LinearOperator, register


@register("identity")
class IdentityOperator(LinearOperator):
    """A = I (denoising): y = x + noise."""


    def _apply(self, x, p):
        return x.clone()  # never alias the input: callers may add noise in place

    _adjoint = _apply
