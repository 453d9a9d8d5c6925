"""A request's acceptance rate, as the adaptive policy measures it, and its probes.

``alpha`` is a decayed count of accepted and rejected proposed tokens, starting from a prior of half
a proposal each (a rate of 0.5). How many tokens each request proposes at a step is the batch's
choice (``pagoda.spec.proposal_plan``); a request the plan leaves out still probes one token every
``PROBE_INTERVAL`` of its decode steps, so it switches back on when its text turns repetitive.
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

    def probe(self, planned: int) -> int:
        """The tokens to propose when the plan gave ``planned``: a request left out
        ``PROBE_INTERVAL`` steps in a row proposes one."""
        if planned > 0:
            return planned
        self.steps_off += 1
        if self.steps_off >= PROBE_INTERVAL:
            self.steps_off = 0
            return 1
        return 0
