"""Output processing: a step's sampled tokens -> request state and ``RequestOutput``s (logprob
formatting, grammar jump-forward, incremental detokenization with stop strings)."""

from __future__ import annotations

import torch

from pagoda.detokenizer import IncrementalDetokenizer
from pagoda.engine.model_runner import ModelRunnerOutput
from pagoda.engine.request import Request, RequestStatus
from pagoda.engine.request_group import RequestGroup
from pagoda.engine.request_registry import RequestRegistry
from pagoda.engine.scheduler_interface import SchedulerInterface
from pagoda.engine.scheduler_output import SchedulerOutput
from pagoda.logits_processor import TokenForcer
from pagoda.outputs import Logprob, PositionLogprobs, RequestOutput
from pagoda.sample.sampler import RowLogprobs
from pagoda.spec.tail import drop_last_tokens
from pagoda.tokenizer import Tokenizer


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, requests: RequestRegistry) -> None:
        self.tokenizer = tokenizer
        self.requests = requests

    def record_logprobs(self, result: ModelRunnerOutput) -> None:
        """Sample and prompt logprobs of the step, onto requests still running."""
        for rid, row in result.logprobs.items():
            request = self.requests.request(rid)
            if request is None:
                continue
            kept = zip(result.spec_accepted.get(rid, ()), result.spec_logprobs.get(rid, ()), strict=True)
            for token, lp in [*kept, (result.sampled[rid], row)]:
                request.logprobs.append(self._position_logprobs(lp, token))
                request.cumulative_logprob += lp.token_logprob
        for rid, entries in result.prompt_logprobs.items():
            request = self.requests.request(rid)
            if request is not None:
                request.prompt_logprobs.extend(entries)

    def process(self, scheduler: SchedulerInterface, progressed: list[Request], result: ModelRunnerOutput
                ) -> dict[str, RequestGroup]:
        """Jump-forward and text for the requests that got a token; returns the groups with news
        (prompt logprobs count as news), by request id."""
        touched: dict[str, RequestGroup] = {}
        for request in progressed:
            group = self.requests.group_of(request.request_id)
            if group is None:
                continue
            sample = group.sample_of(request)
            self._jump_forward(scheduler, request)
            stop = self._detokenize(sample.detokenizer, request)
            if stop is not None and not request.status.finished:
                scheduler.finish_request(request.request_id, RequestStatus.FINISHED_STOPPED, stop)
            elif stop is not None:  # the same token also hit eos/length: the stop string wins
                request.status, request.stop_reason = RequestStatus.FINISHED_STOPPED, stop
            touched[group.request_id] = group
        for rid in result.prompt_logprobs:
            group = self.requests.group_of(rid)
            if group is not None and group.params.prompt_logprobs is not None:
                touched[group.request_id] = group
        return touched

    def finish_pooling(self, scheduler: SchedulerInterface, scheduled: SchedulerOutput,
                       result: ModelRunnerOutput) -> dict[str, RequestGroup]:
        """Pooling requests: add this step's rows; once the prompt is computed, the (mean or last)
        hidden state is the request's embedding and it finishes without sampling. Returns the
        groups that finished."""
        touched: dict[str, RequestGroup] = {}
        for s in scheduled.scheduled:
            request = s.request
            group = self.requests.group_of(request.request_id)
            if request.params.pooling is None or group is None or request.status.finished:
                continue
            part = result.pooled.get(request.request_id)
            if part is not None:
                total, rows = group.pooled or (torch.zeros_like(part[0]), 0)
                group.pooled = (total + part[0], rows + part[1])
            if request.num_computed_tokens >= request.num_prompt_tokens and group.pooled is not None:
                total, rows = group.pooled
                group.embedding = (total / rows).tolist()
                scheduler.finish_request(request.request_id, RequestStatus.FINISHED_STOPPED)
                touched[group.request_id] = group
        return touched

    def outputs(self, groups: dict[str, RequestGroup]) -> list[RequestOutput]:
        """The groups' outputs; finished groups leave the books."""
        outputs = []
        for group in groups.values():
            output = group.output()
            if output.finished:
                self.requests.remove(group.request_id)
            outputs.append(output)
        return outputs

    @staticmethod
    def _detokenize(detokenizer: IncrementalDetokenizer, request: Request) -> str | None:
        """Feeds the request's new tokens (several after a speculated step or jump-forward) to its
        detokenizer; returns the stop string that matched. With stop strings, tokens go one at a
        time and those after the one completing a match are dropped, as plain decoding never
        produced them."""
        new = request.output_token_ids[len(detokenizer.token_ids):]
        if len(new) <= 1 or not detokenizer.stop:
            return detokenizer.update(new)
        for i, token in enumerate(new):
            stop = detokenizer.update([token])
            if stop is not None:
                drop_last_tokens(request, len(new) - 1 - i)
                return stop
        return None

    @staticmethod
    def _jump_forward(scheduler: SchedulerInterface, request: Request) -> int:
        """Appends the tokens a request's grammar forces next, without a model step (they run as one
        chunk in the next step); returns how many. Skipped when logprobs are asked for, since the
        model's raw logprobs of forced tokens are not computed."""
        if request.status.finished or request.params.logprobs is not None:
            return 0
        for processor in request.params.logits_processors:
            if isinstance(processor, TokenForcer):
                forced = processor.forced_tokens(request.output_token_ids)
                if forced:
                    return scheduler.append_forced_tokens(request, forced)
        return 0

    def _position_logprobs(self, row: RowLogprobs, token: int) -> PositionLogprobs:
        decode = self.tokenizer.decode
        entry = {token: Logprob(row.token_logprob, row.token_rank, decode([token], skip_special_tokens=False))}
        for rank, (t, lp) in enumerate(row.top, 1):
            if t not in entry:
                entry[t] = Logprob(lp, rank, decode([t], skip_special_tokens=False))
        return entry
