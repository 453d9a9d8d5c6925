"""Turns the engine's cumulative RequestOutputs into increments, per request and sample.

The engine reports the whole text and token list of each sample every step; sending that
over a pipe would cost O(length^2) per request. The tracker remembers how much of each
sample was already sent and emits only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagoda.outputs import RequestOutput
from pagoda.server.messages import RequestDelta, SampleDelta


@dataclass
class _Sent:
    text_len: int = 0
    num_tokens: int = 0
    num_logprobs: int = 0
    finished: bool = False


@dataclass
class _RequestState:
    samples: dict[int, _Sent] = field(default_factory=dict)
    sent_prompt_logprobs: bool = False


class DeltaTracker:
    def __init__(self) -> None:
        self._states: dict[str, _RequestState] = {}

    def forget(self, request_id: str) -> None:
        self._states.pop(request_id, None)

    def delta(self, out: RequestOutput) -> RequestDelta | None:
        """The part of ``out`` not sent yet, or None when nothing changed."""
        state = self._states.setdefault(out.request_id, _RequestState())
        samples: list[SampleDelta] = []
        for sample in out.outputs:
            sent = state.samples.setdefault(sample.index, _Sent())
            if sent.finished:
                continue
            # the engine's text only grows (it holds back unresolved tails), so a suffix is the delta
            new_text = sample.text[sent.text_len:]
            new_ids = sample.token_ids[sent.num_tokens:]
            new_lps = sample.logprobs[sent.num_logprobs:] if sample.logprobs is not None else None
            finished = sample.finish_reason is not None
            if not new_text and not new_ids and not finished:
                continue
            samples.append(SampleDelta(
                index=sample.index, text=new_text, token_ids=list(new_ids), logprobs=new_lps,
                cumulative_logprob=sample.cumulative_logprob, finish_reason=sample.finish_reason,
                stop_reason=sample.stop_reason))
            sent.text_len = max(sent.text_len, len(sample.text))
            sent.num_tokens = len(sample.token_ids)
            sent.num_logprobs = len(sample.logprobs) if sample.logprobs is not None else 0
            sent.finished = finished
        prompt_logprobs = None
        # complete once the prompt is prefilled, i.e. when the first token or the end arrives
        if out.prompt_logprobs is not None and not state.sent_prompt_logprobs and (samples or out.finished):
            prompt_logprobs = out.prompt_logprobs
            state.sent_prompt_logprobs = True
        if not samples and prompt_logprobs is None and not out.finished:
            return None
        if out.finished:
            self.forget(out.request_id)
        return RequestDelta(
            request_id=out.request_id, samples=samples, finished=out.finished,
            prompt_logprobs=prompt_logprobs, metrics=out.metrics if out.finished else None,
            num_cached_tokens=out.num_cached_tokens, error=out.extra.get("error") if out.extra else None,
            embedding=out.extra.get("embedding") if out.extra else None)
