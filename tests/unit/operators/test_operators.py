"""Linear observation operators: exact adjoints, round trips, and the closed-form facts of each kind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emprior.core.artifacts import load_h5, save_h5
from emprior.operators import (
    OPERATORS,
    LinearOperator,
    OperatorError,
    bicubic_downsample_matrix,
    gaussian_kernel,
    load_operator_arrays,
    make_operator,
    motion_kernel,
    operator_from_arrays,
    save_operator_arrays,
)

DT = torch.float64

# (kind, x_shape, options, per-observation parameters?)
CASES = [
    ("pixel_mask", (3, 6, 7), {"deleted": 0.5}, True),
    ("box_mask", (2, 16, 15), {"box": 4}, True),
    ("projection", (5,), {"m": 2}, True),
    ("fourier_lines", (1, 8, 10), {"acceleration": 2.0}, True),
    ("fourier_lines", (1, 7, 16), {"acceleration": 2.0, "symmetric": True}, True),
    ("blur", (2, 10, 12), {"kernel": "motion", "size": 5, "intensity": 0.8}, True),
    ("blur", (1, 9, 9), {"kernel": "motion", "size": 7, "padding": "circular"}, True),
    ("blur", (3, 8, 8), {"kernel": "gaussian", "size": 5, "std": 1.0}, False),
    ("downsample", (2, 12, 8), {"factor": 4}, False),
    ("downsample", (1, 9, 6), {"factor": 3}, False),
    ("crop", (2, 9, 8), {"h": 5, "w": 4}, False),
    ("identity", (3, 4, 4), {}, False),
]
IDS = [f"{k}-{i}" for i, (k, *_rest) in enumerate(CASES)]


def _op(case, n=4, seed=0) -> LinearOperator:
    kind, shape, opts, _ = case
    return make_operator(kind, n, shape, 0.1, np.random.default_rng(seed), **opts)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def test_every_kind_is_covered():
    assert {c[0] for c in CASES} == set(OPERATORS.names())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_adjoint_per_observation(case):
    op = _op(case, n=4)
    per_obs = case[3]
    assert len(op) == (4 if per_obs else 1)
    if per_obs:  # the four observations really have different parameters
        for v in op.params().values():
            flat = v.reshape(4, -1)
            assert not any(np.array_equal(flat[i], flat[j]) for i in range(4) for j in range(i))
    x = _randn(4, *op.x_shape, seed=1)
    y = _randn(4, *op.y_shape, seed=2)
    Ax, Aty = op.A(x), op.At(y)
    assert Ax.shape == (4, *op.y_shape) and Aty.shape == (4, *op.x_shape)
    assert Ax.dtype == DT and Aty.dtype == DT
    lhs = (Ax * y).flatten(1).sum(1)
    rhs = (x * Aty).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)
    # the i-th parameters act on the i-th sample
    for i in range(4):
        torch.testing.assert_close(op[i].A(x[i:i + 1]), Ax[i:i + 1], rtol=0, atol=1e-14)
    # float32 follows the input dtype
    assert op.A(x.float()).dtype == torch.float32


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_adjoint_shared(case):
    op = _op(case, n=4)[2]
    assert len(op) == 1
    x = _randn(3, *op.x_shape, seed=3)
    y = _randn(3, *op.y_shape, seed=4)
    lhs = (op.A(x) * y).flatten(1).sum(1)
    rhs = (x * op.At(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)
    # shared parameters: each sample is mapped as if alone
    torch.testing.assert_close(op.A(x)[1:2], op.A(x[1:2]), rtol=0, atol=1e-14)
    assert op[[0, 5, 7]] is op  # a shared operator serves any batch of observations


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dense_matrix_transpose(case):
    """Materialise A (one observation) column by column; A^T must be its exact transpose."""
    op = _op(case, n=3)[1]
    d, m = math.prod(op.x_shape), math.prod(op.y_shape)
    A = op.A(torch.eye(d, dtype=DT).reshape(d, *op.x_shape)).reshape(d, m).T
    At = op.At(torch.eye(m, dtype=DT).reshape(m, *op.y_shape)).reshape(m, d).T
    torch.testing.assert_close(At, A.T, rtol=0, atol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip_arrays_and_hdf5(case, tmp_path):
    op = _op(case, n=3, seed=5)
    x = _randn(3, *op.x_shape, seed=6)
    clone = operator_from_arrays(op.params(), op.attrs())
    assert type(clone) is type(op) and len(clone) == len(op) and clone.y_shape == op.y_shape
    assert torch.equal(clone.A(x), op.A(x))
    json.dumps(op.attrs())  # JSON-able

    arrays, attrs = save_operator_arrays(op)
    path = tmp_path / "obs.h5"
    save_h5(path, {"y": op.A(x).numpy(), **{f"op/{k}": v for k, v in arrays.items()}},
            attrs={"operator": json.dumps(attrs)})
    data, file_attrs = load_h5(path)
    back = load_operator_arrays(data, file_attrs["operator"], prefix="op/")
    assert back.attrs() == op.attrs()
    for k, v in op.params().items():
        assert data[f"op/{k}"].dtype == v.dtype
        np.testing.assert_array_equal(back.params()[k], v)
    assert torch.equal(back.A(x), op.A(x))
    assert torch.equal(back.At(op.A(x)), op.At(op.A(x)))


def test_indexing_keeps_per_observation_parameters():
    op = make_operator("projection", 6, (5,), 0.01, np.random.default_rng(0), m=2)
    x = _randn(6, 5)
    idx = np.array([4, 1, 1])
    torch.testing.assert_close(op[idx].A(x[idx]), op.A(x)[idx], rtol=0, atol=0)
    torch.testing.assert_close(op[torch.tensor([0, 2])].A(x[[0, 2]]), op.A(x)[[0, 2]], rtol=0, atol=0)
    assert len(op[1:4]) == 3 and len(op[-1]) == 1
    np.testing.assert_array_equal(op[2:4].params()["A"], op.params()["A"][2:4])
    with pytest.raises(IndexError):
        op[6]


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------

def test_pixel_mask_fraction_and_channels():
    op = make_operator("pixel_mask", 40, (3, 16, 16), 1e-3, np.random.default_rng(1), deleted=0.75)
    mask = op.params()["mask"]
    assert mask.shape == (40, 16, 16) and mask.dtype == np.bool_
    assert abs((~mask).mean() - 0.75) < 0.02  # 10 240 pixels
    x = _randn(40, 3, 16, 16) + 5.0  # never zero
    y = op.A(x)
    for c in range(3):  # one mask for all channels
        np.testing.assert_array_equal((y[:, c] != 0).numpy(), mask)
    torch.testing.assert_close(y, x * torch.as_tensor(mask, dtype=DT)[:, None], rtol=0, atol=0)
    torch.testing.assert_close(op.At(y), y, rtol=0, atol=0)  # A = A^T = A^2


def test_box_mask_geometry():
    op = make_operator("box_mask", 50, (3, 20, 16), 1.0, np.random.default_rng(2), box=6, margin=2)
    corner = op.params()["corner"]
    assert corner[:, 0].min() >= 2 and corner[:, 0].max() <= 20 - 2 - 6
    assert corner[:, 1].min() >= 2 and corner[:, 1].max() <= 16 - 2 - 6
    assert len({tuple(c) for c in corner}) > 20  # random placements
    y = op.A(torch.ones(50, 3, 20, 16, dtype=DT))
    assert ((y == 0).sum(dim=(2, 3)) == 36).all()  # exactly box^2 pixels removed per channel
    for i in (0, 17, 49):
        t, l = corner[i]
        assert (y[i, :, t:t + 6, l:l + 6] == 0).all()
    # default box: half the image side, as 128 of 256 for FFHQ
    assert make_operator("box_mask", 1, (3, 32, 32), 1.0, np.random.default_rng(0)).options["box"] == 16


# ---------------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------------

def test_projection_rows_uniform_on_sphere():
    op = make_operator("projection", 20000, (5,), 1e-2, np.random.default_rng(3), m=2)
    A = op.params()["A"]
    assert A.shape == (20000, 2, 5) and op.y_shape == (2,)
    np.testing.assert_allclose(np.linalg.norm(A, axis=-1), 1.0, atol=1e-12)
    rows = A.reshape(-1, 5)
    assert np.abs(rows.mean(0)).max() < 0.01  # std of the mean: sqrt(1/5 / 40000) = 0.0022
    # uniform on S^{d-1}: E[u u^T] = I / d
    np.testing.assert_allclose(rows.T @ rows / len(rows), np.eye(5) / 5, atol=0.01)
    x = _randn(20000, 5)
    torch.testing.assert_close(op.A(x), torch.einsum("bmd,bd->bm", torch.as_tensor(A), x))


# ---------------------------------------------------------------------------------------------
# Fourier lines (MRI)
# ---------------------------------------------------------------------------------------------

def test_fourier_lines_fraction_and_centre():
    R, W = 6.0, 64
    op = make_operator("fourier_lines", 3000, (1, 4, W), 1e-2, np.random.default_rng(4), acceleration=R)
    lines = op.params()["lines"]
    assert abs(lines.mean() - 1 / R) < 0.005  # std ~ sqrt(p(1-p)/(3000*60)) < 0.001
    # default centre: round(64 * 0.375 / 6) = 4 lowest frequencies k_x in {-2, -1, 0, 1}
    assert lines[:, [0, 1, W - 2, W - 1]].all()
    assert not lines[:, 2].all() and not lines[:, W - 3].all()
    # the official setting: 20 of 320 centre lines at R = 6 and 1/R lines on average
    big = make_operator("fourier_lines", 400, (1, 2, 320), 1e-2, np.random.default_rng(5))
    freq = np.rint(np.fft.fftfreq(320) * 320)
    centre = (freq >= -10) & (freq < 10)
    assert big.params()["lines"][:, centre].all()
    assert abs(big.params()["lines"].mean() - 1 / 6) < 0.005
    sym = make_operator("fourier_lines", 200, (1, 2, W), 1e-2, np.random.default_rng(6), acceleration=R,
                        symmetric=True).params()["lines"]
    np.testing.assert_array_equal(sym, sym[:, (-np.arange(W)) % W])  # k_x and -k_x together
    assert abs(sym.mean() - 1 / R) < 0.01


def test_fourier_lines_is_masked_fft():
    op = make_operator("fourier_lines", 3, (1, 8, 12), 1e-2, np.random.default_rng(7), acceleration=3.0)
    x = _randn(3, 1, 8, 12)
    y = op.A(x)
    assert y.shape == (3, 2, 8, 12)
    k = torch.fft.fft2(x[:, 0], norm="ortho")
    keep = torch.as_tensor(op.params()["lines"])[:, None, :].expand(3, 8, 12)
    torch.testing.assert_close(y[:, 0][keep], k.real[keep], rtol=0, atol=1e-14)
    torch.testing.assert_close(y[:, 1][keep], k.imag[keep], rtol=0, atol=1e-14)
    assert (y[:, 0][~keep] == 0).all() and (y[:, 1][~keep] == 0).all()
    # Parseval: all lines kept -> A is an isometry from real images
    full = operator_from_arrays({"lines": np.ones((1, 12), bool)}, {**op.attrs(), "y_shape": [2, 8, 12]})
    torch.testing.assert_close(full.A(x).square().sum((1, 2, 3)), x.square().sum((1, 2, 3)))
    torch.testing.assert_close(full.At(full.A(x)), x)


def _gram(op, AAt: bool) -> torch.Tensor:
    if AAt:
        m = math.prod(op.y_shape)
        return op.A(op.At(torch.eye(m, dtype=DT).reshape(m, *op.y_shape))).reshape(m, m)
    d = math.prod(op.x_shape)
    return op.At(op.A(torch.eye(d, dtype=DT).reshape(d, *op.x_shape))).reshape(d, d)


def test_fourier_lines_symmetric_mask_gives_projections():
    op = make_operator("fourier_lines", 1, (1, 6, 10), 1e-2, np.random.default_rng(8), acceleration=2.0,
                       symmetric=True)
    for AAt in (True, False):
        P = _gram(op, AAt)
        torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-13)
        torch.testing.assert_close(P, P.T, rtol=0, atol=1e-13)
    # rank = H * number of kept lines (one real degree of freedom per kept frequency)
    P = _gram(op, AAt=False)
    assert round(float(torch.trace(P))) == 6 * int(op.params()["lines"].sum())


def test_fourier_lines_one_sided_lines_have_eigenvalue_half():
    """A^T A = F^H ((M + M') / 2) F: eigenvalue 1/2 on lines kept without their mirror."""
    lines = np.zeros((1, 10), bool)
    lines[0, [0, 1, 9, 3, 5]] = True  # {1, -1} pair, DC, Nyquist (5), and 3 without -3 (= 7)
    op = operator_from_arrays({"lines": lines}, {"kind": "fourier_lines", "x_shape": [1, 6, 10],
                                                 "noise_std": 0.1})
    ev = torch.linalg.eigvalsh(_gram(op, AAt=False))
    expected = torch.tensor([0.0] * 6 * 4 + [0.5] * 6 * 2 + [1.0] * 6 * 4, dtype=DT)
    torch.testing.assert_close(ev, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# blur
# ---------------------------------------------------------------------------------------------

def test_kernels():
    g = gaussian_kernel(7, 1.5)
    assert g.shape == (7, 7) and abs(g.sum() - 1) < 1e-15
    assert abs(g[3, 3] / g[3, 4] - math.exp(1 / (2 * 1.5**2))) < 1e-12
    np.testing.assert_allclose(g, g.T, atol=0)
    np.testing.assert_allclose(g, g[::-1], atol=0)
    rng = np.random.default_rng(9)
    ks = [motion_kernel(21, 0.5, rng) for _ in range(5)]
    for k in ks:
        assert k.shape == (21, 21) and (k >= 0).all() and abs(k.sum() - 1) < 1e-12
        ii, jj = np.meshgrid(np.arange(21), np.arange(21), indexing="ij")
        np.testing.assert_allclose([(k * ii).sum(), (k * jj).sum()], [10, 10], atol=1e-9)  # centred
    assert not np.allclose(ks[0], ks[1])
    # repeatable from the generator
    np.testing.assert_array_equal(motion_kernel(21, 0.5, np.random.default_rng(1)),
                                  motion_kernel(21, 0.5, np.random.default_rng(1)))


def _spread(k: np.ndarray) -> float:
    """Smallest / largest principal variance of the kernel's mass (0 for a straight segment)."""
    s = k.shape[0]
    ii, jj = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    pos = np.stack([ii.ravel(), jj.ravel()], 1).astype(float)
    w = k.ravel()
    c = pos - w @ pos
    e = np.linalg.eigvalsh((c * w[:, None]).T @ c)
    return e[0] / e[1]


def test_motion_kernel_curvature_grows_with_intensity():
    rng = np.random.default_rng(10)
    straight = [_spread(motion_kernel(31, 0.0, rng)) for _ in range(20)]
    curved = [_spread(motion_kernel(31, 1.0, rng)) for _ in range(20)]
    assert max(straight) < 0.03  # a straight segment, widened only by bilinear splatting
    assert np.mean(curved) > 0.1


def test_blur_constant_interior_and_conv2d():
    x = torch.full((2, 3, 14, 15), 2.5, dtype=DT)
    op = make_operator("blur", 2, (3, 14, 15), 0.1, np.random.default_rng(11), size=5, intensity=0.7)
    y = op.A(x)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 2.5), rtol=0, atol=1e-13)
    assert (y[..., 0, 0] < 2.5).all()  # zero padding darkens the corner
    # same as torch conv2d (cross-correlation, so the kernel is flipped) with zero padding
    z = _randn(2, 3, 14, 15)
    k = torch.as_tensor(op.params()["kernel"])
    for i in range(2):
        w = k[i].flip(0, 1).expand(3, 1, 5, 5)
        ref = F.conv2d(z[i:i + 1], w, padding=2, groups=3)
        torch.testing.assert_close(op.A(z)[i:i + 1], ref, rtol=0, atol=1e-13)
    circ = make_operator("blur", 1, (1, 9, 9), 0.1, np.random.default_rng(12), kernel="gaussian", size=5,
                         padding="circular")
    assert len(circ) == 1
    ones = torch.ones(1, 1, 9, 9, dtype=DT)
    torch.testing.assert_close(circ.A(ones), ones, rtol=0, atol=1e-13)  # periodic: constant everywhere
    delta = operator_from_arrays({"kernel": np.pad([[1.0]], 2)[None]}, op.attrs() | {"y_shape": [3, 14, 15]})
    torch.testing.assert_close(delta.A(z), z, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# down-sampling, crop
# ---------------------------------------------------------------------------------------------

def test_downsample_constant_shape_and_bicubic():
    op = make_operator("downsample", 5, (3, 16, 24), 0.1, np.random.default_rng(0), factor=4)
    assert len(op) == 1 and op.y_shape == (3, 4, 6)
    y = op.A(torch.full((2, 3, 16, 24), -1.25, dtype=DT))
    torch.testing.assert_close(y, torch.full_like(y, -1.25), rtol=0, atol=1e-14)
    # interior equals PIL-style antialiased bicubic (Keys a = -0.5), here through torch
    x = _randn(2, 3, 16, 24)
    ref = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(op.A(x)[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], rtol=0, atol=1e-13)
    # factor 2 weights: h(t / 2) / 2 at t = 0.5, 1.5, 2.5, 3.5 with Keys' cubic, a = -0.5
    D = bicubic_downsample_matrix(16, 2)
    h = [1 - 2.5 * t**2 + 1.5 * t**3 for t in (0.25, 0.75)]
    h += [-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 for t in (1.25, 1.75)]
    w = np.array([h[3], h[2], h[1], h[0], h[0], h[1], h[2], h[3]])  # output 3 sits at input 6.5
    np.testing.assert_allclose(D[3, 3:11], w / w.sum(), atol=1e-15)
    np.testing.assert_allclose(D.sum(1), 1.0, atol=1e-15)


def test_crop_values_and_zero_pad():
    op = make_operator("crop", 1, (2, 9, 8), 0.1, np.random.default_rng(0), h=5, w=4)
    x = _randn(3, 2, 9, 8)
    torch.testing.assert_close(op.A(x), x[..., 2:7, 2:6], rtol=0, atol=0)
    back = op.At(op.A(x))
    assert back[..., 2:7, 2:6].equal(x[..., 2:7, 2:6]) and back.abs().sum() == x[..., 2:7, 2:6].abs().sum()


# ---------------------------------------------------------------------------------------------
# errors and noise
# ---------------------------------------------------------------------------------------------

def test_wrong_shapes_raise_one_line_value_errors():
    op = make_operator("pixel_mask", 3, (1, 8, 8), 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, 8, 8\), got \(3, 1, 8, 9\)"):
        op.A(torch.zeros(3, 1, 8, 9))
    with pytest.raises(ValueError, match=r"expected y of shape \(B, 1, 8, 8\), got \(3, 64\)"):
        op.At(torch.zeros(3, 64))
    with pytest.raises(ValueError, match=r"holds 3 observations but x has batch size 2"):
        op.A(torch.zeros(2, 1, 8, 8))
    proj = make_operator("projection", 1, (5,), 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expected y of shape \(B, 2\), got \(4, 5\)") as info:
        proj.At(torch.zeros(4, 5))
    assert "\n" not in str(info.value) and isinstance(info.value, OperatorError)
    with pytest.raises(ValueError, match="unknown operator kind 'nope'"):
        make_operator("nope", 1, (5,), 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"rho: not an option of operator 'pixel_mask' \(allowed: deleted\)"):
        make_operator("pixel_mask", 1, (1, 8, 8), 0.1, np.random.default_rng(0), rho=0.5)
    with pytest.raises(ValueError, match=r"box 6 with margin 2 does not fit in 9x16"):
        make_operator("box_mask", 1, (1, 9, 16), 0.1, np.random.default_rng(0), box=6, margin=2)
    with pytest.raises(ValueError, match=r"not a multiple of factor 3"):
        make_operator("downsample", 1, (1, 8, 8), 0.1, np.random.default_rng(0), factor=3)
    with pytest.raises(ValueError, match=r"parameter 'mask' must have shape \(n, 8, 8\), got \(2, 8, 7\)"):
        operator_from_arrays({"mask": np.ones((2, 8, 7), bool)}, op.attrs())


@pytest.mark.parametrize("kind,shape,opts", [("projection", (5,), {}), ("pixel_mask", (2, 8, 8), {}),
                                             ("fourier_lines", (1, 8, 8), {"acceleration": 2.0})])
def test_observe_noise_std(kind, shape, opts):
    op = make_operator(kind, 1, shape, 0.05, np.random.default_rng(1), **opts)
    x = _randn(4000, *shape)
    y = op.observe(x, generator=torch.Generator().manual_seed(0))
    e = y - op.A(x)
    measured = op.measured(y)
    measured = torch.ones_like(e, dtype=torch.bool) if measured is None else measured.expand_as(e).bool()
    assert abs(float(e[measured].std()) / 0.05 - 1) < 0.05
    assert (e[~measured] == 0).all()  # unmeasured coordinates stay exactly zero
    y2 = op.observe(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)


def test_autograd_through_A():
    op = make_operator("blur", 2, (1, 8, 8), 0.1, np.random.default_rng(0), size=3)
    x = _randn(2, 1, 8, 8).requires_grad_(True)
    r = _randn(2, 1, 8, 8, seed=9)
    (op.A(x) * r).sum().backward()
    torch.testing.assert_close(x.grad, op.At(r), rtol=0, atol=1e-13)  # grad of <A x, r> is A^T r
