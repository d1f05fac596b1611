import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from emprior.evaluation.metrics.sinkhorn import debiased_to_reference, regularized_ot, sinkhorn_divergence


def _clouds(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = rng.normal(size=(n, 2)) * 0.8 + np.array([0.7, 0.0])
    return x, y, rng.random(n) + 0.1


def _pot(*args, **kw) -> float:
    """POT reference, run to convergence (it warns about overflow in unused plan entries)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sinkhorn_divergence(*args, backend="pot", max_iter=20_000, tol=1e-6, **kw)


@pytest.mark.parametrize("objective", ["entropic", "transport"])
def test_backends_agree_reg_1e_1(objective):
    x, y, w = _clouds(50)
    for b in (None, w) if objective == "entropic" else (w,):
        p = _pot(x, y, 1e-1, b=b, objective=objective)
        assert 0.4 < p < 1.5  # W2^2 of these clouds: 0.7^2 + spread mismatch
        assert sinkhorn_divergence(x, y, 1e-1, b=b, objective=objective) == pytest.approx(p, rel=0.01)
        fast = sinkhorn_divergence(x, y, 1e-1, b=b, objective=objective, backend="geomloss")
        assert fast == pytest.approx(p, rel=0.05)


@pytest.mark.parametrize("objective", ["entropic", "transport"])
def test_backends_agree_reg_1e_2_weighted(objective):
    x, y, w = _clouds(30, seed=1)
    p = _pot(x, y, 1e-2, a=w[::-1].copy(), b=w, objective=objective)
    assert sinkhorn_divergence(x, y, 1e-2, a=w[::-1].copy(), b=w, objective=objective) == pytest.approx(p, rel=0.02)


def test_two_atoms_against_converged_pot():
    """Mass 0.2 moved across distance 1: S -> W2^2 = 0.2 as reg -> 0. Epsilon-scaling with one update
    per temperature (GeomLoss) stalls far from it; the tracked "torch" solver matches POT run to
    convergence."""
    x = np.array([[0.0], [1.0]])
    for reg, expected in ((1e-1, 0.16224), (1e-2, 0.19622), (1e-3, 0.19962)):
        p = _pot(x, x, reg, a=[0.5, 0.5], b=[0.3, 0.7])
        assert p == pytest.approx(expected, rel=1e-4)
        assert sinkhorn_divergence(x, x, reg, a=[0.5, 0.5], b=[0.3, 0.7]) == pytest.approx(p, rel=0.01)
    assert sinkhorn_divergence(x, x, 1e-3, a=[0.5, 0.5], b=[0.3, 0.7], backend="geomloss") < 0.15


def test_single_points_closed_form():
    """One atom each: the only plan is a Dirac, KL = 0, so V = |x - y|^2 for both objectives."""
    x, y = np.array([[0.0, 1.0, 2.0]]), np.array([[1.0, -1.0, 2.5]])
    for backend in ("geomloss", "pot"):
        for objective in ("entropic", "transport"):
            assert regularized_ot(x, y, 1e-3, backend=backend, objective=objective) == pytest.approx(5.25, rel=1e-9)


@pytest.mark.parametrize("objective", ["entropic", "transport"])
def test_identical_sets_give_zero(objective):
    x, _, w = _clouds(120)
    assert abs(sinkhorn_divergence(x, x, 1e-2, objective=objective)) < 1e-9
    assert abs(sinkhorn_divergence(x, x, 1e-2, a=w, b=w, objective=objective)) < 1e-9


def test_translation_gives_squared_shift():
    """S(a, a + t) = |t|^2 exactly: |x - x' - t|^2 = |x - x'|^2 - 2 <x - x', t> + |t|^2 and the cross
    term integrates to 0 under any coupling of a with itself."""
    x, _, w = _clouds(120)
    values = []
    for t in (0.25, 0.5, 1.0, 2.0):
        shift = np.array([t, -t]) / np.sqrt(2)
        v = sinkhorn_divergence(x, x + shift, 1e-2, a=w, b=w)
        assert v == pytest.approx(t**2, rel=0.02)
        values.append(v)
    assert np.all(np.diff(values) > 0)


def test_weighted_two_points():
    """Atoms {0, 1}: moving 0.2 of the mass across distance 1 costs W2^2 = 0.2 (S -> W2^2 as reg -> 0)."""
    x = np.array([[0.0], [1.0]])
    v = sinkhorn_divergence(x, x, 1e-3, a=[0.5, 0.5], b=[0.3, 0.7])
    assert v == pytest.approx(0.2, rel=0.01)
    # Zero weights drop their atoms: same value with an extra massless atom far away.
    x3 = np.array([[0.0], [1.0], [50.0]])
    # (only the starting temperature, the bounding box, sees it)
    assert sinkhorn_divergence(x3, x3, 1e-3, a=[0.5, 0.5, 0.0], b=[0.3, 0.7, 0.0]) == pytest.approx(v, rel=1e-6)


def test_gaussian_1d_w2_as_reg_decreases():
    """Quantile grids of N(m1, s1^2), N(m2, s2^2): W2^2 = (m1 - m2)^2 + (s1 - s2)^2 mean(z^2) exactly
    (monotone coupling), -> (m1 - m2)^2 + (s1 - s2)^2; S_reg approaches it as reg -> 0."""
    n = 400
    z = norm.ppf((np.arange(n) + 0.5) / n)
    m1, s1, m2, s2 = 0.3, 1.0, -0.5, 0.6
    x, y = (m1 + s1 * z)[:, None], (m2 + s2 * z)[:, None]
    exact = (m1 - m2) ** 2 + (s1 - s2) ** 2 * np.mean(z**2)
    assert exact == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=0.01)
    errors = [abs(sinkhorn_divergence(x, y, reg) - exact) / exact for reg in (1e-1, 1e-2, 1e-3)]
    assert errors[0] > errors[2]
    assert errors[1] < 0.03 and errors[2] < 0.01


def test_accepts_torch_and_event_shapes():
    x, y, _ = _clouds(60)
    ref = sinkhorn_divergence(x, y, 1e-2)
    xt = torch.tensor(x, dtype=torch.float32).reshape(60, 1, 2)
    yt = torch.tensor(y, dtype=torch.float32).reshape(60, 2, 1)
    assert sinkhorn_divergence(xt, yt, 1e-2) == pytest.approx(ref, rel=1e-4)


def test_debiased_to_reference():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(400, 2))
    p1, p2 = p[:200], p[200:]
    floor = sinkhorn_divergence(p1, p2, 1e-2)
    assert floor > 0.01
    # Without rng the halves are p[:200], p[200:]; q = p1 + t gives S(q, p1) = |t|^2 exactly.
    t = np.array([0.6, 0.8])
    assert debiased_to_reference(p1 + t, p, 1e-2) == pytest.approx(1.0 - floor, abs=0.01)
    assert debiased_to_reference(p2, p, 1e-2) == pytest.approx(0.0, abs=1e-6)
    # q longer than p1 is cut to |p1| points: extra points do not matter.
    assert debiased_to_reference(np.concatenate([p2, p1 + 5]), p, 1e-2) == pytest.approx(0.0, abs=1e-6)
    # A random split changes the halves but not the size of the answer for an honest q.
    fresh = rng.normal(size=(200, 2))
    assert abs(debiased_to_reference(fresh, p, 1e-2, rng=np.random.default_rng(1))) < 0.1
    # Official form: T(p1, q) - T(p1, p2) is 0 for q = p2, clamped at 1e-6; shifted q adds |t|^2.
    assert debiased_to_reference(p2, p, 1e-1, kind="official") == 1e-6
    off = debiased_to_reference(p2 + t, p, 1e-1, kind="official")
    t12 = regularized_ot(p1, p2, 1e-1, objective="transport")
    assert off == pytest.approx(regularized_ot(p1, p2 + t, 1e-1, objective="transport") - t12, rel=1e-9)
    assert off == pytest.approx(1.0, abs=0.25)


@pytest.mark.parametrize("kw, match", [
    ({"reg": 0.0}, "reg"), ({"reg": float("inf")}, "reg"), ({"backend": "keops"}, "backend"),
    ({"objective": "linear"}, "objective"), ({"a": [1.0, -1.0, 1.0]}, "a: weights"),
    ({"b": [1.0, 1.0]}, "b: 2 weights"), ({"a": [0.0, 0.0, 0.0]}, "a: weights sum"),
    ({"scaling": 1.0}, "scaling"),
])
def test_bad_arguments(kw, match):
    x = np.zeros((3, 2))
    args = {"reg": 1e-2} | kw
    with pytest.raises(ValueError, match=match):
        sinkhorn_divergence(x, x + 1, **args)


def test_bad_points():
    with pytest.raises(ValueError, match="x: expected shape"):
        sinkhorn_divergence(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="event size"):
        sinkhorn_divergence(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        sinkhorn_divergence(np.array([[np.nan]]), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="kind"):
        debiased_to_reference(np.zeros((3, 1)), np.zeros((4, 1)), kind="paper")


def test_high_dimensional_events_use_the_same_cost():
    """Events with > 8 coordinates take the matrix-product cost; translation still gives |t|^2."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4, 4))
    t = np.full((4, 4), 0.25)  # |t|^2 = 16 / 16 = 1
    assert sinkhorn_divergence(x, x + t, 1e-2) == pytest.approx(1.0, rel=0.02)
    assert abs(sinkhorn_divergence(x, x, 1e-2)) < 1e-9


def test_precomputed_self_term_gives_the_same_divergence():
    """On shared atoms (Fig. 2's case: all measures are weights on the same x_t) passing
    ot_xx = regularized_ot(x, x, a, a) gives exactly the divergence computed without it."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2))
    a, b = rng.random(40), rng.random(40) ** 4
    a, b = a / a.sum(), b / b.sum()
    full = sinkhorn_divergence(x, x, 1e-1, a=a, b=b)
    shared = sinkhorn_divergence(x, x, 1e-1, a=a, b=b, ot_xx=regularized_ot(x, x, 1e-1, a=a, b=a))
    assert full > 1e-3
    assert full == shared
    ot_aa = regularized_ot(x, x, 1e-1, a=a, b=a)
    assert sinkhorn_divergence(x, x, 1e-1, a=a, b=b, ot_xx=ot_aa + 1.0) == pytest.approx(full - 0.5, abs=1e-12)


def test_sample_quality_backend_key():
    """evaluate.sinkhorn_backend picks the solver of the per-iteration metric and is recorded with it.
    Fresh draws from the reference's law score ~0 (the p1-to-p2 floor is subtracted); shifting them by
    t adds ~|t|^2 = 1 (0.84-1.27 over five seeds at 200 points in R^5); both solvers agree."""
    from emprior.evaluation.iteration import sample_quality

    rng = np.random.default_rng(3)
    clean, q = rng.normal(size=(400, 5)), rng.normal(size=(200, 5))
    t = np.array([0.6, 0.8, 0.0, 0.0, 0.0])
    out = {b: sample_quality(q + t, clean, {"sinkhorn_reg": 1e-2, "sinkhorn_backend": b}, 0, None)
           for b in ("torch", "geomloss")}
    default = sample_quality(q + t, clean, {"sinkhorn_reg": 1e-2}, 0, None)
    assert default["sinkhorn_backend"] == "torch" and default["sinkhorn"] == out["torch"]["sinkhorn"]
    assert out["geomloss"]["sinkhorn_backend"] == "geomloss"
    assert out["geomloss"]["sinkhorn"] == pytest.approx(out["torch"]["sinkhorn"], rel=0.02)
    honest = sample_quality(q, clean, {"sinkhorn_reg": 1e-2, "sinkhorn_backend": "geomloss"}, 0, None)["sinkhorn"]
    assert abs(honest) < 0.15
    assert 0.6 < out["geomloss"]["sinkhorn"] - honest < 1.4


def test_sample_quality_repeats_average_chunks_and_splits():
    """evaluate.sinkhorn_repeats R: the number is the mean of R debiased divergences, chunk r of the
    samples against its own random half-split of the reference (recomputed here step by step), with
    the values and their standard error recorded; R = 1 is the single-split number; R too large is an
    error naming the key."""
    from emprior.evaluation.iteration import sample_quality
    from emprior.evaluation.metrics.sinkhorn import debiased_to_reference

    rng = np.random.default_rng(5)
    clean, q = rng.normal(size=(120, 3)), rng.normal(size=(180, 3)) + 0.5
    ev = {"sinkhorn_reg": 1e-2, "sinkhorn_repeats": 3, "sinkhorn_scaling": 0.8}
    out = sample_quality(q, clean, ev, 7, None)
    r = np.random.default_rng(7)
    ref = []
    for k in range(3):  # n_ref = min(120, 2 * 60) = 120, m = 60
        p_k = clean[r.permutation(120)[:120]]
        ref.append(debiased_to_reference(q[60 * k:60 * (k + 1)], p_k, 1e-2, rng=r, scaling=0.8))
    assert out["sinkhorn_repeats"] == pytest.approx(ref, abs=1e-12)
    assert out["sinkhorn"] == pytest.approx(np.mean(ref), abs=1e-12)
    assert out["sinkhorn_se"] == pytest.approx(np.std(ref, ddof=1) / 3**0.5, abs=1e-12)
    assert len(set(np.round(ref, 9))) == 3 and out["sinkhorn_scaling"] == 0.8
    assert 0.5 * 0.75 < out["sinkhorn"] < 1.5 * 0.75  # shift by 0.5 in R^3: |t|^2 = 0.75
    single = sample_quality(q, clean, {"sinkhorn_reg": 1e-2}, 7, None)
    assert "sinkhorn_repeats" not in single and single["sinkhorn_scaling"] == 0.9
    with pytest.raises(ValueError, match="evaluate.sinkhorn_repeats"):
        sample_quality(q[:2], clean, {"sinkhorn_repeats": 3}, 0, None)
