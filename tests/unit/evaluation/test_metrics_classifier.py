"""FID/IS stand-ins in the features of a digits classifier: exact formulas on constructed inputs."""

import numpy as np
import pytest

from emprior.data.digits import load_digits
from emprior.evaluation.metrics.classifier import digits_scores, frechet_distance, inception_score


def test_frechet_distance_closed_form():
    """f_q = 2 (f_p - mean) + mean + 1: C_q = 4 C_p, (C_q C_p)^(1/2) = 2 C_p, mean shift 1 per feature,
    so FD = d + tr(4 C_p + C_p - 4 C_p) = d + tr(C_p) exactly."""
    f_p = np.random.default_rng(0).standard_normal((500, 6)) @ np.diag([1.0, 2, 3, 0.5, 1, 1])
    m = f_p.mean(0)
    fd = frechet_distance(2 * (f_p - m) + m + 1, f_p)
    assert fd == pytest.approx(6 + np.trace(np.cov(f_p, rowvar=False)), rel=1e-8)
    assert abs(frechet_distance(f_p, f_p)) < 1e-8


def test_inception_score_bounds():
    one_hot = np.eye(10)[np.arange(100) % 10]
    assert inception_score(one_hot) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0, rel=1e-9)
    # all samples confidently the same class: no diversity
    assert inception_score(np.eye(10)[np.zeros(100, int)]) == pytest.approx(1.0, rel=1e-6)


def test_digits_scores_rank_clean_above_noise_and_blur():
    """Two disjoint sets of 800 clean digits are close (measured FD 1.8, IS 9.7); uniform noise
    (FD 251, IS 3.0) and the mean digit repeated (FD 175, IS 1.0) are far."""
    x = load_digits()
    order = np.random.default_rng(1).permutation(len(x))
    a, b = x[order[:800]], x[order[800:1600]]
    good = digits_scores(a, b)
    assert good["classifier_accuracy"] > 0.97
    assert good["is_digits"] > 8.0
    noise = digits_scores(np.random.default_rng(2).uniform(-2, 2, a.shape).astype(np.float32), b)
    blur = digits_scores(np.broadcast_to(a.mean(0), a.shape), b)  # the mean digit, 800 times
    assert good["fd_digits"] < 5.0
    assert noise["fd_digits"] > 50 * good["fd_digits"] and blur["fd_digits"] > 50 * good["fd_digits"]
    assert noise["is_digits"] < 0.5 * good["is_digits"] and blur["is_digits"] < 1.1


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="samples: expected 8x8 digits"):
        digits_scores(np.zeros((4, 3, 32, 32)), load_digits()[:10])
    with pytest.raises(ValueError, match="samples: contains NaN"):
        digits_scores(np.full((4, 64), np.nan), load_digits()[:10])
