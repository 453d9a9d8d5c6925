"""The scheduler's decision for one step: how many new tokens each request runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagoda.engine.request import Request


@dataclass
class ScheduledRequest:
    """``request`` runs tokens ``start .. start + num_new_tokens`` of its ``all_token_ids`` this step,
    with K/V in ``block_table``. ``sample``: the step reaches its last known token, so a new token
    is sampled from the final position. ``spec_token_ids``: tokens proposed past the last known one
    (speculative decoding), run after it and counted in ``num_new_tokens``."""

    request: Request
    start: int
    num_new_tokens: int
    block_table: list[int]
    spec_token_ids: list[int] = field(default_factory=list)

    @property
    def sample(self) -> bool:
        return self.start + self.num_new_tokens - len(self.spec_token_ids) == self.request.num_tokens

    @property
    def token_ids(self) -> list[int]:
        """The step's input tokens: known ones, then the proposal."""
        known = self.request.all_token_ids[self.start:self.start + self.num_new_tokens - len(self.spec_token_ids)]
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
