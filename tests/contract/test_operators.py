"""Contract of every registered operator: <A x, y> = <x, A^T y> (the adjoint identity the MMPS
solves rely on, Eqs. 22-23) per observation, with its default options, on the first of a few shapes
that it accepts."""

import numpy as np
import pytest
import torch

from emprior.operators import OPERATORS, OperatorError, make_operator

SHAPES = [(1, 8, 8), (3, 8, 8), (1, 16, 16), (1, 64, 64), (6,)]


def _draw(name):
    for shape in SHAPES:
        try:
            return make_operator(name, 3, shape, 0.1, np.random.default_rng(0)), shape
        except (OperatorError, ValueError):
            continue
    pytest.fail(f"operator {name!r} accepts none of the shapes {SHAPES} with its default options")


@pytest.mark.parametrize("name", OPERATORS.names())
def test_adjoint_identity(name):
    op, shape = _draw(name)
    g = torch.Generator().manual_seed(1)
    n = max(len(op), 3)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    ax = op.A(x)
    assert ax.shape == (n, *op.y_shape) and ax.dtype == torch.float64
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    aty = op.At(y)
    assert aty.shape == x.shape
    lhs = (ax * y).reshape(n, -1).sum(1)
    rhs = (x * aty).reshape(n, -1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", OPERATORS.names())
def test_noise_model_and_save_load_roundtrip(name):
    from emprior.operators import operator_from_arrays, save_operator_arrays

    op, shape = _draw(name)
    x = torch.randn(max(len(op), 3), *shape, generator=torch.Generator().manual_seed(2))
    y = op.observe(x, generator=torch.Generator().manual_seed(3))
    resid = (y - op.A(x)).reshape(len(y), -1)
    measured = op.measured(y)
    if measured is not None:
        resid = resid[torch.broadcast_to(measured, y.shape).reshape(len(y), -1).bool()]
    assert abs(float(resid.std()) / op.noise_std - 1) < 0.3
    params, attrs = save_operator_arrays(op)
    back = operator_from_arrays(params, attrs)
    torch.testing.assert_close(back.A(x), op.A(x), rtol=0, atol=0)
