"""How many tokens to propose for one request at one step: as many as pay for themselves.

A step costs about ``a + b * rows``. Proposing a j-th token for a request adds one row (cost ``b``)
and yields a token only if the first j proposals are all accepted (probability ``alpha ** j`` when
each is accepted with probability ``alpha``). At batch size B, a token is worth the step's time
shared out, ``(a + b * B) / B``; so the j-th proposal pays when ``alpha ** j > B / (B + a / b)``.
At B = 1 on a CPU (weights streamed once per step, whatever the rows) that is a low bar; at B = 64
it asks for acceptance near 0.9, so speculation switches itself off where it would not pay.

``alpha`` is measured per request: a decayed count of accepted and rejected proposals, starting
from a prior of half a proposal each (a rate of 0.5). A request switched off still probes one token every ``PROBE_INTERVAL``
decode steps, so it switches back on when its text turns repetitive.
"""

from __future__ import annotations

from dataclasses import dataclass

DECAY = 0.8  # weight of the past per verification: acceptance follows the last few dozen proposals
PRIOR_ACCEPTED = 0.5
PRIOR_REJECTED = 0.5
PROBE_INTERVAL = 16


@dataclass
class Acceptance:
    """One request's decayed record of accepted and rejected proposed tokens."""

    accepted: float = 0.0
    rejected: float = 0.0
    steps_off: int = 0

    @property
    def rate(self) -> float:
        return (self.accepted + PRIOR_ACCEPTED) / (self.accepted + self.rejected + PRIOR_ACCEPTED + PRIOR_REJECTED)

    def record(self, num_proposed: int, num_accepted: int) -> None:
        """A verification: the first ``num_accepted`` of ``num_proposed`` tokens were kept, and the
        next one (if any) was refused; later ones were never judged."""
        self.accepted = DECAY * self.accepted + num_accepted
        self.rejected = DECAY * self.rejected + (1 if num_accepted < num_proposed else 0)


def num_tokens_to_propose(acceptance: Acceptance, max_tokens: int, batch_size: int,
                          step_overhead_rows: float) -> int:
    """The largest j <= max_tokens with ``alpha ** j`` above the cost bar (0: do not speculate;
    every ``PROBE_INTERVAL``-th such step proposes one token anyway)."""
    bar = batch_size / (batch_size + step_overhead_rows)
    alpha, k, gain = acceptance.rate, 0, 1.0
    while k < max_tokens:
        gain *= alpha
        if gain <= bar:
            break
        k += 1
    if k == 0 and max_tokens > 0:
        acceptance.steps_off += 1
        if acceptance.steps_off >= PROBE_INTERVAL:
            acceptance.steps_off = 0
            return 1
    return k
