"""The step-cost table: decayed means per bucket of rows, estimates from the nearest measurements,
the linear prior before any, never falling as rows grow."""

from __future__ import annotations

import pytest

from pagoda.spec.step_cost import StepCost, bucket


def test_buckets_exact_then_eight_per_doubling():
    assert [bucket(r) for r in (1, 5, 32)] == [1, 5, 32]
    assert [bucket(r) for r in (33, 36, 37, 64, 65, 72, 73, 200)] == [36, 36, 40, 64, 72, 72, 80, 208]


def test_prior_before_any_measurement_then_scaled_to_the_nearest():
    cost = StepCost(overhead_rows=8)
    assert cost.estimate(1) == 9 and cost.estimate(8) == 16
    cost.record(1, 0.009)
    assert cost.estimate(1) == pytest.approx(0.009)
    assert cost.estimate(8) == pytest.approx(0.016)  # along the prior's slope from the one measured point
    cost.record(8, 0.020)
    assert cost.estimate(4) == pytest.approx(0.009 + 0.011 * 3 / 7)  # between measurements: linear
    assert cost.estimate(16) == pytest.approx(0.020 * 24 / 16)


def test_decayed_mean_follows_the_machine_and_caps_hiccups():
    cost = StepCost(overhead_rows=8)
    for _ in range(10):
        cost.record(4, 0.010)
    cost.record(4, 1.0)  # a pause: counts as three times the mean at most
    assert cost.measured(4) == pytest.approx(0.010 + 0.1 * 0.020)
    for _ in range(100):
        cost.record(4, 0.020)  # the machine got busier
    assert cost.measured(4) == pytest.approx(0.020, rel=1e-3)


def test_estimates_never_fall_and_learning_can_be_off():
    cost = StepCost(overhead_rows=8)
    for rows, seconds in ((1, 0.010), (4, 0.011), (5, 0.020), (6, 0.015)):  # 6 measured low: noise
        cost.record(rows, seconds)
    assert cost.estimates(1, 6) == pytest.approx([0.010, 0.031 / 3, 0.032 / 3, 0.011, 0.020, 0.020])
    fixed = StepCost(overhead_rows=8, learn=False)
    fixed.record(1, 0.010)
    assert fixed.measured(1) is None and fixed.estimate(1) == 9
