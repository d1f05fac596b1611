import numpy as np
import pytest

from emprior.data.randman import RandomManifold


def _grid(n: int = 8192) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def test_shapes_and_determinism():
    m1 = RandomManifold(5, np.random.default_rng(3))
    m2 = RandomManifold(5, np.random.default_rng(3))
    m3 = RandomManifold(5, np.random.default_rng(4))
    u = np.linspace(0, 1, 11)
    x = m1(u)
    assert x.shape == (11, 5) and x.dtype == np.float64
    np.testing.assert_array_equal(x, m2(u))
    assert np.abs(x - m3(u)).max() > 0.1
    assert m1.sample(7, np.random.default_rng(0)).shape == (7, 5)
    assert m1.sample(0, np.random.default_rng(0)).shape == (0, 5)


def test_formula_and_parameter_ranges():
    """f_i(u) = sum_k k^-alpha a_ik sin(2 pi (k b_ik u + c_ik)), a, b, c in [0, 1), then standardised."""
    alpha, K = 1.7, 4
    m = RandomManifold(3, np.random.default_rng(0), n_freq=K, smoothness=alpha)
    k = np.arange(1, K + 1)
    a = m.amplitude * k**alpha
    b = m.frequency / k
    assert np.all((0 <= a) & (a < 1)) and np.all((0 <= b) & (b < 1))
    assert np.all((0 <= m.phase) & (m.phase < 1))
    u = np.array([0.0, 0.3, 0.99])
    raw = np.stack([(m.amplitude[i] * np.sin(2 * np.pi * (np.outer(u, m.frequency[i]) + m.phase[i]))).sum(1)
                    for i in range(3)], axis=1)
    np.testing.assert_allclose(m(u), (raw - m.offset) / m.scale, rtol=0, atol=1e-12)


def test_single_sinusoid_moments_closed_form():
    """For f(u) = a sin(2 pi (b u + c)) on U[0, 1): mean = a (cos 2pi c - cos 2pi (b + c)) / (2 pi b)."""
    m = RandomManifold(4, np.random.default_rng(1), n_freq=1, smoothness=0.0)
    a, b, c = m.amplitude[:, 0], m.frequency[:, 0], m.phase[:, 0]
    mean = a * (np.cos(2 * np.pi * c) - np.cos(2 * np.pi * (b + c))) / (2 * np.pi * b)
    # E[sin^2] = 1/2 - (sin 4pi (b + c) - sin 4pi c) / (8 pi b)
    second = a**2 * (0.5 - (np.sin(4 * np.pi * (b + c)) - np.sin(4 * np.pi * c)) / (8 * np.pi * b))
    np.testing.assert_allclose(m.offset, mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.scale, np.sqrt(second - mean**2), rtol=1e-6)


def test_standardised_coordinates():
    m = RandomManifold(5, np.random.default_rng(7))
    x = m(_grid())
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(x.std(0), 1.0, rtol=1e-12)
    s = m.sample(200_000, np.random.default_rng(8))
    np.testing.assert_allclose(s.mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose(s.std(0), 1.0, atol=0.02)


def test_samples_lie_on_the_curve_and_noise_adds_variance():
    m = RandomManifold(3, np.random.default_rng(2))
    curve = m(np.linspace(0, 1, 100_001))
    clean = m.sample(200, np.random.default_rng(5))
    d2 = ((clean[:, None, :] - curve[None, ::10, :]) ** 2).sum(-1).min(1)  # coarse grid first
    assert np.sqrt(d2).max() < 0.05
    noisy = m.sample(100_000, np.random.default_rng(6), noise_std=0.5)
    np.testing.assert_allclose(noisy.var(0), 1.25, rtol=0.03)


def test_smoothness_damps_high_frequencies():
    rough = RandomManifold(3, np.random.default_rng(0), n_freq=6, smoothness=0.0)
    smooth = RandomManifold(3, np.random.default_rng(0), n_freq=6, smoothness=3.0)
    # Same a, b, c draws: the amplitude ratio of term k is exactly k^-3.
    np.testing.assert_allclose(smooth.amplitude / rough.amplitude, np.arange(1, 7) ** -3.0 * np.ones((3, 1)))
    u = _grid(4096)
    curv = [np.abs(np.diff(m(u), 2, axis=0)).mean() for m in (rough, smooth)]
    assert curv[1] < curv[0]


@pytest.mark.parametrize("kw, match", [
    ({"dim": 0}, "dim"), ({"dim": 2.0}, "dim"), ({"n_freq": 0}, "n_freq"),
    ({"smoothness": -1.0}, "smoothness"), ({"smoothness": float("nan")}, "smoothness"),
])
def test_bad_arguments(kw, match):
    args = {"dim": 3, "n_freq": 3, "smoothness": 1.0} | kw
    with pytest.raises(ValueError, match=match):
        RandomManifold(args["dim"], np.random.default_rng(0), n_freq=args["n_freq"], smoothness=args["smoothness"])


def test_bad_inputs():
    m = RandomManifold(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="u must have shape"):
        m(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        m(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="noise_std"):
        m.sample(3, np.random.default_rng(0), noise_std=-1.0)
    with pytest.raises(ValueError, match="n must"):
        m.sample(-1, np.random.default_rng(0))


def test_minmax_scaling_maps_the_curve_onto_minus_two_two():
    """Official DiEM scaling: each coordinate's range over u in [0, 1) is [-2, 2] (grid min/max)."""
    m = RandomManifold(5, np.random.default_rng(7), n_freq=10, smoothness=3.0, scaling="minmax")
    x = m(_grid())
    np.testing.assert_allclose(x.min(0), -2.0, atol=1e-12)
    np.testing.assert_allclose(x.max(0), 2.0, atol=1e-12)
    # same curve as the standardised one, up to a per-coordinate affine map
    s = RandomManifold(5, np.random.default_rng(7), n_freq=10, smoothness=3.0)(_grid())
    for i in range(5):
        assert abs(np.corrcoef(x[:, i], s[:, i])[0, 1] - 1) < 1e-12
    with pytest.raises(ValueError, match="scaling"):
        RandomManifold(3, np.random.default_rng(0), scaling="zscore")
