"""How many tokens each decoding request of a step proposes: the batch's choice, by expected tokens
per second of the step.

A request with acceptance rate ``alpha`` gains ``alpha ** j`` expected tokens from its j-th proposed
token (it counts only if the j - 1 before it were kept), and every proposed token is one more row of
the step. A step of ``rows`` generated rows costs ``cost[rows]`` (``pagoda.spec.step_cost``) and
yields ``base_tokens`` plus the gains of its proposals. Since each request's gains fall with j, the
best P proposal rows are the P largest gains of the batch; the plan takes the P (0 included: no
proposals at all) with the most expected tokens per second. So a step whose cost jumps at some row
count crosses the jump only when the proposals past it (and the cheap rows that follow it) are worth
its price, and a request's k stops where the cost steps up (k = 3 at B = 1 when 4 rows are cheap and
5 are not).
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_proposals(rates: Sequence[float], max_tokens: Sequence[int], base_rows: int, costs: Sequence[float],
                   base_tokens: float | None = None) -> list[int]:
    """The number of tokens each request proposes (``<= max_tokens[i]``).

    ``rates[i]``, ``max_tokens[i]``: request i's acceptance rate and the most it may propose.
    ``base_rows``: the step's generated rows without proposals (``base_tokens``, by default the same
    number, is what they yield). ``costs[p]``: the estimated cost of the step with ``base_rows + p``
    rows, for p = 0 .. the most proposal rows the step may have (shorter than ``sum(max_tokens) + 1``
    when the step is capped)."""
    gains: list[tuple[float, int, int]] = []  # (-gain, j, request): best first, a request's j in order
    for i, (alpha, k) in enumerate(zip(rates, max_tokens, strict=True)):
        g = 1.0
        for j in range(1, k + 1):
            g *= alpha
            gains.append((-g, j, i))
    gains.sort()
    tokens = float(base_rows) if base_tokens is None else base_tokens
    best, best_rate = 0, tokens / costs[0]
    for p, (neg_gain, _, _) in enumerate(gains[:len(costs) - 1], start=1):
        tokens -= neg_gain
        rate = tokens / costs[p]
        if rate > best_rate:
            best, best_rate = p, rate
    plan = [0] * len(rates)
    for _, _, i in gains[:best]:
        plan[i] += 1
    return plan
