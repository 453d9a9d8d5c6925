"""The scheduler's speculation hook: what to propose for a decoding request, and what to learn
from its verification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pagoda.engine.request import Request
from pagoda.engine.scheduler_output import ScheduledRequest
from pagoda.spec.adaptive import Acceptance, num_tokens_to_propose
from pagoda.spec.config import SpeculativeConfig
from pagoda.spec.ngram_proposer import NgramProposer
from pagoda.spec.spec_counters import SpecCounters


def can_speculate(request: Request) -> bool:
    """Requests whose logits depend on a stateful processor (grammars, user logits processors) are
    decoded one token at a time: their processors see one history per call. Pooling requests do
    not decode."""
    return not request.params.logits_processors and request.params.pooling is None


@dataclass(frozen=True)
class Proposal:
    """What a decoding request proposes for one step: tokens known now (n-gram), or a number of
    tokens for the runner's draft model to propose before the forward pass (draft_model)."""

    token_ids: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0

    def __len__(self) -> int:
        return len(self.token_ids) or self.num_draft_tokens


class Speculator:
    """Owned by one scheduler. ``propose`` is asked once per decode step of a running request (the
    scheduler has capped ``max_tokens`` by the step's budget, the request's max_tokens and the
    context length); ``record`` hears how many of the proposed tokens the target model kept;
    ``forget`` drops a finished request's state.

    ``max_generated_rows``: where the model's kernel for generated rows changes with their number
    in a step (GGUF int4 under the default numerics), the most such rows a step may have for its
    proposals, so a step plain decoding keeps under it stays under it (None: no limit)."""

    def __init__(self, config: SpeculativeConfig, max_generated_rows: int | None = None) -> None:
        self.config = config
        self.max_generated_rows = max_generated_rows
        # draft_model: the runner's draft proposes (it owns the weights); this decides only how many
        self.proposer = (NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
                         if config.method == "ngram" else None)
        self.counters = SpecCounters()
        self._acceptance: dict[str, Acceptance] = {}

    def room(self, batch_size: int, scheduled: Sequence[ScheduledRequest]) -> int | None:
        """How many more tokens this step's proposals may add, with ``scheduled`` its rows so far
        (None: no limit)."""
        if self.max_generated_rows is None or batch_size > self.max_generated_rows:
            return None  # plain decoding is past the limit already: its kernel is the one above it
        return self.max_generated_rows - batch_size - sum(s.num_spec_tokens for s in scheduled)

    def propose(self, request: Request, max_tokens: int, batch_size: int) -> Proposal:
        if not can_speculate(request):
            return Proposal()
        k = min(max_tokens, self.config.num_speculative_tokens)
        if self.config.adaptive:
            acceptance = self._acceptance.setdefault(request.request_id, Acceptance())
            k = num_tokens_to_propose(acceptance, k, batch_size, self.config.step_overhead_rows)
        if k <= 0:
            return Proposal()
        if self.proposer is None:
            return Proposal(num_draft_tokens=k)
        return Proposal(self.proposer.propose(request.request_id, request.all_token_ids, k))

    def record(self, request_id: str, num_proposed: int, num_accepted: int) -> None:
        self.counters.record(num_proposed, num_accepted)
        acceptance = self._acceptance.get(request_id)
        if acceptance is not None:
            acceptance.record(num_proposed, num_accepted)

    def forget(self, request_id: str) -> None:
        self._acceptance.pop(request_id, None)
        if self.proposer is not None:
            self.proposer.forget(request_id)
