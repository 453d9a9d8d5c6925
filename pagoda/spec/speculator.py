"""The scheduler's speculation hook: what each decoding request proposes at a step, and what to
learn from its verification and from the step's wall time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pagoda.engine.request import Request
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.spec.adaptive import Acceptance
from pagoda.spec.config import SpeculativeConfig
from pagoda.spec.ngram_proposer import NgramProposer
from pagoda.spec.proposal_plan import plan_proposals
from pagoda.spec.spec_counters import SpecCounters
from pagoda.spec.step_cost import StepCost


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

    def cut(self, n: int) -> Proposal:
        """The proposal's first ``n`` tokens at most."""
        if len(self) <= n:
            return self
        return Proposal(self.token_ids[:n]) if self.token_ids else Proposal(num_draft_tokens=max(0, n))


class Speculator:
    """Owned by one scheduler. Each step, ``plan`` is told the step's decoding requests (before any is
    scheduled) and chooses every one's proposal at once; ``propose`` then hands a request its share
    (cut to what the step's budget has left); ``record`` hears how many of the proposed tokens the
    target model kept; ``record_step`` hears a completed step's wall time; ``forget`` drops a
    finished request's state.

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
        self.step_cost = StepCost(config.step_overhead_rows, learn=config.cost_model == "measured")
        self._acceptance: dict[str, Acceptance] = {}
        self._plan: dict[str, Proposal] = {}

    def room(self, batch_size: int, scheduled: Sequence[ScheduledRequest]) -> int | None:
        """How many more tokens this step's proposals may add, with ``scheduled`` its rows so far
        (None: no limit)."""
        if self.max_generated_rows is None or batch_size > self.max_generated_rows:
            return None  # plain decoding is past the limit already: its kernel is the one above it
        return self.max_generated_rows - batch_size - sum(s.num_spec_tokens for s in scheduled)

    def plan(self, decoding: Sequence[Request], max_tokens: Sequence[int], base_rows: int, max_rows: int) -> None:
        """Chooses this step's proposals. ``decoding``: the requests that decode one token this step
        unless they speculate; ``max_tokens[i]``: the most request i may propose (its max_tokens and
        the context length); ``base_rows``: the step's generated rows without proposals;
        ``max_rows``: the most proposal rows the step's token budget holds."""
        self._plan = {}
        candidates: list[tuple[Request, Proposal]] = []
        for request, cap in zip(decoding, max_tokens, strict=True):
            k = min(cap, self.config.num_speculative_tokens)
            if k <= 0 or not can_speculate(request):
                continue
            if self.proposer is None:
                candidates.append((request, Proposal(num_draft_tokens=k)))
            else:  # the tokens a match offers: a request with none is no candidate
                tokens = self.proposer.propose(request.request_id, request.all_token_ids, k)
                if tokens:
                    candidates.append((request, Proposal(tokens)))
        if not candidates:
            return
        if not self.config.adaptive:
            self._plan = {r.request_id: p for r, p in candidates}
            return
        room = self.room(base_rows, ())
        if room is not None:
            max_rows = min(max_rows, room)
        acceptance = [self._acceptance.setdefault(r.request_id, Acceptance()) for r, _ in candidates]
        most = max(0, min(max_rows, sum(len(p) for _, p in candidates)))
        costs = self.step_cost.estimates(base_rows, base_rows + most)
        plan = plan_proposals([a.rate for a in acceptance], [len(p) for _, p in candidates], base_rows, costs)
        for (request, proposal), a, k in zip(candidates, acceptance, plan, strict=True):
            k = a.probe(k)
            if k > 0:
                self._plan[request.request_id] = proposal.cut(k)

    def propose(self, request: Request, max_tokens: int) -> Proposal:
        """The request's planned proposal, cut to ``max_tokens``."""
        proposal = self._plan.get(request.request_id)
        return Proposal() if proposal is None or max_tokens <= 0 else proposal.cut(max_tokens)

    def record(self, request_id: str, num_proposed: int, num_accepted: int) -> None:
        self.counters.record(num_proposed, num_accepted)
        acceptance = self._acceptance.get(request_id)
        if acceptance is not None:
            acceptance.record(num_proposed, num_accepted)

    def record_step(self, scheduled: SchedulerOutput, seconds: float) -> None:
        """A completed step's wall time, learned when all its rows were generated rows (a prompt row
        runs other kernels, and a prefill's cost says nothing of a decode step's)."""
        if any(s.start < s.request.num_prompt_tokens for s in scheduled.scheduled):
            return
        self.step_cost.record(scheduled.total_num_scheduled_tokens, seconds)

    def forget(self, request_id: str) -> None:
        self._acceptance.pop(request_id, None)
        self._plan.pop(request_id, None)
        if self.proposer is not None:
            self.proposer.forget(request_id)
