"""The scheduler's decision for one step: how many new tokens each request runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagoda.engine.request import Request


@dataclass
class ScheduledRequest:
    """``request`` runs tokens ``start .. start + num_new_tokens`` of its ``all_token_ids`` this step,
    with K/V in ``block_table``. ``sample``: the step reaches its last known token, so a new token
    is sampled from the final position. ``spec_token_ids``: tokens proposed past the last known one
    (speculative decoding), run after it and counted in ``num_new_tokens``. ``num_draft_tokens``:
    a proposal of that many tokens that the runner's draft model makes before the forward pass; it
    writes them into ``spec_token_ids`` (the one field a runner writes)."""

    request: Request
    start: int
    num_new_tokens: int
    block_table: list[int]
    spec_token_ids: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0

    @property
    def num_spec_tokens(self) -> int:
        """The proposal's length, whether drafted yet (or part-way) or not."""
        return max(len(self.spec_token_ids), self.num_draft_tokens)

    @property
    def num_known_tokens(self) -> int:
        return self.num_new_tokens - self.num_spec_tokens

    @property
    def sample(self) -> bool:
        return self.start + self.num_known_tokens == self.request.num_tokens

    @property
    def token_ids(self) -> list[int]:
        """The step's input tokens: known ones, then the proposal (once there is one)."""
        known = self.request.all_token_ids[self.start:self.start + self.num_known_tokens]
        return known + self.spec_token_ids if self.spec_token_ids else known


@dataclass
class SchedulerOutput:
    """A plain record keyed by request id; the model runner needs nothing else to run the step."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)
    # (source, destination) KV blocks to copy before the forward pass (copy-on-write)
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    # static batching: one-token rows computed (and discarded) for the batch's finished requests,
    # as a padded batch would
    num_padding_rows: int = 0

    @property
    def num_scheduled_tokens(self) -> dict[str, int]:
        return {s.request.request_id: s.num_new_tokens for s in self.scheduled}

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
