"""Speculation counters, reported on ``/metrics`` in vLLM's style."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecCounters:
    num_drafts: int = 0  # verifications (requests x steps that carried a proposal)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # accepted_per_position[j]: proposals whose (j + 1)-th token was accepted
    accepted_per_position: list[int] = field(default_factory=list)

    def record(self, num_proposed: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_proposed
        self.num_accepted_tokens += num_accepted
        if len(self.accepted_per_position) < num_proposed:
            self.accepted_per_position.extend([0] * (num_proposed - len(self.accepted_per_position)))
        for j in range(num_accepted):
            self.accepted_per_position[j] += 1

    def add(self, other: SpecCounters) -> SpecCounters:
        """The sum of two sets of counters (engines with several schedulers)."""
        n = max(len(self.accepted_per_position), len(other.accepted_per_position))
        per = [(self.accepted_per_position[j] if j < len(self.accepted_per_position) else 0)
               + (other.accepted_per_position[j] if j < len(other.accepted_per_position) else 0) for j in range(n)]
        return SpecCounters(self.num_drafts + other.num_drafts, self.num_draft_tokens + other.num_draft_tokens,
                            self.num_accepted_tokens + other.num_accepted_tokens, per)
