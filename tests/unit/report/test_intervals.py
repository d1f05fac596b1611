"""The 95 % Student-t interval over seeds against closed forms and the t table."""

import math

import pytest

from emprior.report.intervals import t_interval, t_quantile


def test_t_quantiles_are_the_table_values():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, abs=1e-6)  # = tan(0.475 pi)
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)
    assert t_quantile(0.975, 2) == pytest.approx(4.3026527, abs=1e-6)  # = 0.975-quantile closed form for dof 2
    q = 0.975
    assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-12)
    assert t_quantile(0.975, 10**7) == pytest.approx(1.959964, abs=1e-5)  # the normal limit


def test_two_and_three_seeds_give_the_closed_form_half_width():
    mean, half = t_interval([1.0, 3.0])  # s = sqrt(2), n = 2: half = t_{0.975,1} * sqrt(2) / sqrt(2)
    assert mean == 2.0 and half == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)
    mean, half = t_interval([10.0, 11.0, 12.0])  # s = 1, n = 3
    assert mean == 11.0 and half == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3), rel=1e-12)


def test_one_value_has_no_interval_and_non_finite_values_are_left_out():
    mean, half = t_interval([19.56])
    assert mean == 19.56 and math.isnan(half)
    mean, half = t_interval([1.0, None, float("nan"), 3.0])
    assert mean == 2.0 and half == pytest.approx(12.7062047, abs=1e-6)
    assert all(math.isnan(v) for v in t_interval([]))
