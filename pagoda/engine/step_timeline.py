"""What each engine step computed, for the live dashboard's batch timeline.

A ``StepRecord`` is read off the step's ``SchedulerOutput`` (which rows ran how many tokens) and the
wall time the engine loop measured around ``step()``. Rows still inside their prompt count as
prefill (recomputation after a preemption included); a row past its prompt runs one decode token,
and any further tokens in its chunk were forced by its grammar (jump-forward) or proposed by
speculative decoding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pagoda.engine.scheduler_output import SchedulerOutput

TIMELINE_LENGTH = 512  # steps kept for a dashboard that polls late


@dataclass(frozen=True)
class StepRecord:
    index: int  # counts the steps recorded by this timeline
    end_time: float  # time.monotonic() when the step returned
    duration_s: float
    batch_size: int  # rows that ran (padding rows of a static batch excluded)
    prefill_tokens: int
    decode_tokens: int
    jump_forward_tokens: int
    speculative_tokens: int = 0
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens + self.jump_forward_tokens + self.speculative_tokens


def count_step_tokens(scheduled: SchedulerOutput) -> tuple[int, int, int]:
    """(prefill, decode, jump-forward) tokens of one step's rows."""
    prefill = decode = forced = 0
    for s in scheduled.scheduled:
        if s.start < s.request.num_prompt_tokens:
            prefill += s.num_new_tokens
        elif s.num_new_tokens > 0:
            decode += 1
            forced += s.num_new_tokens - 1 - s.num_spec_tokens
    return prefill, decode, forced


class StepTimeline:
    """A bounded history of steps; readers ask for the records after the last index they saw."""

    def __init__(self, length: int = TIMELINE_LENGTH) -> None:
        self._records: deque[StepRecord] = deque(maxlen=length)
        self._next_index = 0

    def record(self, scheduled: SchedulerOutput, end_time: float, duration_s: float) -> StepRecord:
        prefill, decode, forced = count_step_tokens(scheduled)
        speculative = sum(s.num_spec_tokens for s in scheduled.scheduled)
        rec = StepRecord(self._next_index, end_time, duration_s, len(scheduled.scheduled), prefill, decode, forced,
                         speculative, num_preempted=len(scheduled.preempted_request_ids))
        self._next_index += 1
        self._records.append(rec)
        return rec

    def since(self, index: int) -> list[StepRecord]:
        """Records with ``index`` greater than the given one, oldest first."""
        if not self._records or self._records[-1].index <= index:
            return []
        first = self._records[0].index
        return list(self._records)[max(0, index + 1 - first):]

    @property
    def last_index(self) -> int:
        return self._next_index - 1
