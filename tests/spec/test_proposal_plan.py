"""The batch's proposal plan on synthetic cost tables: it stops where the cost steps up unless what
lies past the step pays for it, never proposes past a request's most, and proposes nothing when
nothing pays; requests left out probe."""

from __future__ import annotations

import pytest

from pagoda.spec.adaptive import PROBE_INTERVAL, Acceptance
from pagoda.spec.proposal_plan import plan_proposals


def _table(cheap_up_to: int, cheap: float, dear: float, base_rows: int, most: int) -> list[float]:
    """costs[p] for a step of base_rows + p rows: ``cheap`` up to ``cheap_up_to`` rows, ``dear`` above
    (up to ``base_rows + most``)."""
    return [cheap if base_rows + p <= cheap_up_to else dear for p in range(most + 1)]


@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.9, 0.99, 1.0])
def test_single_request_stops_where_the_cost_steps(alpha):
    # B = 1: 4 rows cost what 1 does, 5 rows twice as much (torch's int4 kernel on the default model)
    assert plan_proposals([alpha], [4], 1, _table(4, 1.0, 2.0, 1, 4)) == [3]


def test_single_request_crosses_a_small_step_only_when_acceptance_is_high():
    costs = _table(4, 1.0, 1.1, 1, 6)
    assert plan_proposals([0.5], [6], 1, costs) == [3]  # 5 rows: 1.94 tokens per 1.1 < 1.875 per 1.0
    assert plan_proposals([0.95], [6], 1, costs) == [6]  # 6.0 tokens per 1.1 > 3.7 per 1.0


def test_batch_refuses_a_costly_step_at_low_acceptance_and_takes_it_at_high():
    # tiles of 8 rows, each one 0.3 of the first's cost; B = 8 decoding rows fill the first
    costs = [1.0 + 0.3 * ((8 + p - 1) // 8) for p in range(33)]
    assert plan_proposals([0.25] * 8, [4] * 8, 8, costs) == [0] * 8  # (8 + 8 * 0.25) / 1.3 < 8
    plan = plan_proposals([0.95] * 8, [4] * 8, 8, costs)
    assert plan == [4] * 8  # 36.2 tokens per 2.2 beats every shorter plan
    mixed = plan_proposals([0.95] * 4 + [0.2] * 4, [4] * 8, 8, costs)
    assert mixed == [4, 4, 4, 4, 0, 0, 0, 0]  # two full tiles, to the requests likely to be kept


def test_never_past_max_tokens_and_nothing_when_nothing_pays():
    linear = [8.0 + 1 + p for p in range(40)]
    assert plan_proposals([1.0, 1.0, 1.0], [2, 0, 5], 1, linear[:8]) == [2, 0, 5]
    assert plan_proposals([0.9, 0.9], [4, 4], 2, [1.0, 1.0, 1.0]) == [1, 1]  # the budget holds 2 rows
    b64 = [8.0 + 64 + p for p in range(64 * 4 + 1)]
    assert plan_proposals([0.75] * 64, [4] * 64, 64, b64) == [0] * 64
    assert plan_proposals([0.05], [4], 1, [9.0, 10.0, 11.0, 12.0, 13.0]) == [0]


def test_linear_prior_matches_the_per_request_bar():
    # with cost a + b * rows, a first proposal pays exactly when alpha > B / (B + a / b)
    for batch in (1, 8, 64):
        bar = batch / (batch + 8)
        costs = [8.0 + batch + p for p in range(batch * 4 + 1)]
        assert plan_proposals([bar * 1.02] * batch, [4] * batch, batch, costs) != [0] * batch
        assert plan_proposals([bar * 0.98] * batch, [4] * batch, batch, costs) == [0] * batch


def test_left_out_requests_probe_and_come_back():
    bad = Acceptance()
    for _ in range(20):
        bad.record(2, 0)
    assert bad.rate < 0.1
    ks = [bad.probe(0) for _ in range(2 * PROBE_INTERVAL)]
    assert ks.count(1) == 2 and set(ks) == {0, 1}
    for _ in range(10):  # the text turned repetitive: acceptance recovers, and the plan takes it
        bad.record(1, 1)
    assert plan_proposals([bad.rate], [4], 1, [9.0, 10.0, 11.0, 12.0, 13.0])[0] >= 2
