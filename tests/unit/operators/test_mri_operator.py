"""The accelerated-MRI operator (``fourier_lines``) against the official DiEM measurement: the
zero-filled inverse is A^T y, the official centred FFT is ours up to a signed permutation of y, and the
drawn masks keep a fraction 1/R of the k-space columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emprior.operators import make_operator

DT = torch.float64


def _official_measure(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """experiments/fastmri/utils.py:36-44, 81-89 (09a7253): fftshift(fft2(ifftshift(x))) * A, A a
    per-column mask in centred order, as (Re, Im)."""
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)) * mask
    return np.stack([k.real, k.imag], axis=1)


def test_zero_filled_inverse_is_the_adjoint():
    rng = np.random.default_rng(0)
    op = make_operator("fourier_lines", 4, (1, 16, 16), 1e-2, rng, acceleration=4.0)
    x = torch.as_tensor(rng.normal(size=(4, 1, 16, 16)), dtype=DT)
    y = op.A(x) + 1e-2 * torch.as_tensor(rng.normal(size=(4, 2, 16, 16)), dtype=DT) * op.measured(op.A(x))
    lines = op.params()["lines"]
    k = (y[:, 0] + 1j * y[:, 1]).numpy() * lines[:, None, :]          # zero-filled k-space
    zero_filled = np.fft.ifft2(k, norm="ortho").real[:, None]
    np.testing.assert_allclose(op.At(y).numpy(), zero_filled, atol=1e-12)
    # measured entries are the whole kept columns, both real and imaginary parts
    m = torch.broadcast_to(op.measured(y), y.shape).reshape(4, -1).sum(1).numpy()
    np.testing.assert_array_equal(m, 2 * 16 * lines.sum(1))


def test_native_order_equals_the_official_centred_fft_up_to_signs():
    """fft2(ifftshift(x)) = (-1)^(k_x + k_y) fft2(x) for even sides, and fftshift permutes: the
    official y is a signed permutation of ours (an orthogonal map), so with white noise the two
    likelihoods are the same."""
    rng = np.random.default_rng(1)
    h = w = 12
    op = make_operator("fourier_lines", 3, (1, h, w), 1e-2, rng, acceleration=3.0)
    lines = op.params()["lines"]
    x = rng.normal(size=(3, h, w))
    ours = op.A(torch.as_tensor(x[:, None], dtype=DT)).numpy()
    official = _official_measure(x, np.fft.fftshift(lines, axes=-1)[:, None, :])
    sign = (-1.0) ** np.add.outer(np.arange(h), np.arange(w))
    np.testing.assert_allclose(official, np.fft.fftshift(ours * sign, axes=(-2, -1)), atol=1e-12)


@pytest.mark.parametrize("w, rule, accelerations", [
    (64, "exact", (4, 6, 8, 16, 32)),     # the CPU preset (phantoms)
    (320, "exact", (4, 6, 8, 16, 32)),
    (320, "official", (4, 6)),            # the official rule keeps W/R lines on average where 120/R is even
])
def test_realised_acceleration_of_drawn_masks(w, rule, accelerations):
    # 1000 masks at 320 (sd of W / mean(lines) <= 0.8 % at R = 32); at 64 columns R = 32 keeps ~2 lines,
    # so 10 000 masks bring that sd from 1.6 % to 0.5 %
    n = 1000 if w == 320 else 10000
    for R in accelerations:
        op = make_operator("fourier_lines", n, (1, 1, w), 1e-2, np.random.default_rng(R), acceleration=R,
                           rule=rule)
        lines = op.params()["lines"]
        assert abs(w / lines.sum(1).mean() / R - 1) < 0.02, (w, rule, R)
        freq = np.rint(np.fft.fftfreq(w) * w)
        n_c = int(lines.all(0).sum())
        centre = (freq >= -(n_c // 2)) & (freq < n_c - n_c // 2)
        assert lines[:, centre].all()
        if w == 320 and R == 6:
            assert n_c == 20  # the 20 central columns of the official code
        if rule == "official":
            assert n_c == 2 * np.ceil(60 / R)  # make_mask: 160 - ceil(60/r) : 160 + ceil(60/r)
            p = lines[:, ~centre].mean()
            assert abs(p - 200 / (320 * R - 120)) < 0.005


def test_official_rule_rounds_the_centre_up():
    op = make_operator("fourier_lines", 1, (1, 1, 320), 1e-2, np.random.default_rng(0), acceleration=8.0)
    assert op.params()["lines"].all(0).sum() >= 16  # 2 ceil(7.5); the exact rule keeps round(15) = 15
    exact = make_operator("fourier_lines", 2000, (1, 1, 320), 1e-2, np.random.default_rng(0), acceleration=8.0,
                          rule="exact").params()["lines"]
    freq = np.rint(np.fft.fftfreq(320) * 320)
    assert exact[:, (freq >= -7) & (freq < 8)].all() and not exact[:, freq == -8].all()
