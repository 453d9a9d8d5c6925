"""The adaptive policy: k follows acceptance and the batch size; off when it cannot pay, with probes."""

from __future__ import annotations

from pagoda.spec.adaptive import PROBE_INTERVAL, Acceptance, num_tokens_to_propose


def test_k_follows_acceptance_and_batch_size():
    good, fair, bad = Acceptance(), Acceptance(), Acceptance()
    for _ in range(20):
        good.record(4, 4)
        fair.record(4, 3)
        bad.record(4, 0)
    assert good.rate > 0.95 and 0.7 < fair.rate < 0.8 and bad.rate < 0.1
    assert num_tokens_to_propose(fair, 4, batch_size=1, step_overhead_rows=8) == 4
    assert num_tokens_to_propose(fair, 4, batch_size=8, step_overhead_rows=8) == 2  # 0.75^2 > 0.5 > 0.75^3
    # at B = 64 a step's rows are its cost: only near-certain proposals pay
    assert num_tokens_to_propose(fair, 4, batch_size=64, step_overhead_rows=8) == 0
    assert num_tokens_to_propose(good, 4, batch_size=64, step_overhead_rows=8) == 4
    assert num_tokens_to_propose(bad, 4, batch_size=1, step_overhead_rows=8) == 0
    mid = Acceptance()
    assert 0 < num_tokens_to_propose(mid, 4, batch_size=1, step_overhead_rows=8) < 4  # prior 0.5


def test_switched_off_requests_probe():
    bad = Acceptance()
    for _ in range(20):
        bad.record(2, 0)
    ks = [num_tokens_to_propose(bad, 4, batch_size=8, step_overhead_rows=8) for _ in range(2 * PROBE_INTERVAL)]
    assert ks.count(1) == 2 and set(ks) == {0, 1}
    for _ in range(10):  # the text turned repetitive: acceptance recovers, speculation comes back
        bad.record(1, 1)
    assert num_tokens_to_propose(bad, 4, batch_size=1, step_overhead_rows=8) >= 2
