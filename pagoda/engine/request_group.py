"""A user request as the engine tracks it: its prompt and its n samples, and the output it reports."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pagoda.detokenizer import IncrementalDetokenizer
from pagoda.engine.request import Request
from pagoda.logits_processor import CloneableProcessor
from pagoda.lora.request import LoRARequest
from pagoda.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagoda.sampling_params import SamplingParams
from pagoda.tokenizer import Tokenizer


@dataclass(eq=False)
class Sample:
    """One of a request's n samples: the scheduler's sequence plus its text state."""

    request: Request
    detokenizer: IncrementalDetokenizer
    text: str = ""  # what has been released (safe to stream)


@dataclass(eq=False)
class RequestGroup:
    """A user request: its prompt and its n samples."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[Sample]
    metrics: RequestMetrics
    # a pooling request's running (sum, rows) of final hidden states, and its result
    pooled: tuple[torch.Tensor, int] | None = None
    embedding: list[float] | None = None

    @classmethod
    def create(cls, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
               tokenizer: Tokenizer, metrics: RequestMetrics, *, max_tokens: int, priority: int = 0,
               cache_salt: str | None = None, lora_request: LoRARequest | None = None) -> RequestGroup:
        """The group and its n samples (ids ``{i}_{request_id}`` when n > 1; sample i seeded with
        ``seed + i``; each with its own copy of stateful logits processors)."""
        stop_ids = set(params.stop_token_ids or ())
        if not params.ignore_eos:
            stop_ids |= tokenizer.eos_token_ids
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or ())  # a list once validated
        samples = []
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            request = Request(
                request_id=request_id if params.n == 1 else f"{i}_{request_id}",
                prompt_token_ids=prompt_token_ids, params=params if i == 0 else fresh_processors(params),
                max_tokens=max_tokens, stop_token_ids=frozenset(stop_ids),
                metrics=metrics if params.n == 1 else RequestMetrics(arrival_time=metrics.arrival_time),
                priority=priority, seed=seed, cache_salt=cache_salt, lora_request=lora_request,
                generator=None if seed is None else torch.Generator())
            detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids, params.skip_special_tokens,
                                                 stop, params.include_stop_str_in_output)
            samples.append(Sample(request, detokenizer))
        return cls(request_id, prompt, prompt_token_ids, params, samples, metrics)

    @property
    def finished(self) -> bool:
        return all(s.request.status.finished for s in self.samples)

    def sample_of(self, request: Request) -> Sample:
        return next(s for s in self.samples if s.request is request)

    def output(self) -> RequestOutput:
        """The cumulative output so far; releases each sample's new text (held back where a stop
        string might still match, unless the sample has finished)."""
        outputs = []
        want_logprobs = self.params.logprobs is not None
        for i, s in enumerate(self.samples):
            r = s.request
            s.text += s.detokenizer.get_delta(r.status.finished)
            outputs.append(CompletionOutput(
                index=i, text=s.text, token_ids=list(r.output_token_ids),
                cumulative_logprob=r.cumulative_logprob if want_logprobs else None,
                logprobs=list(r.logprobs) if want_logprobs else None,
                finish_reason=r.finish_reason, stop_reason=r.stop_reason))
        prompt_logprobs = None
        if self.params.prompt_logprobs is not None:
            prompt_logprobs = [None, *self.samples[0].request.prompt_logprobs]
        errors = [s.request.error for s in self.samples if s.request.error]
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
            outputs=outputs, finished=self.finished, prompt_logprobs=prompt_logprobs, metrics=self.metrics,
            num_cached_tokens=self.samples[0].request.num_cached_tokens,
            extra=({"error": errors[0]} if errors else {}) | (
                {"embedding": self.embedding} if self.embedding is not None else {}))


def fresh_processors(params: SamplingParams) -> SamplingParams:
    """Params for another of n samples: stateful logits processors (grammar matchers) get their own
    copy through their ``clone()``."""
    if not params.logits_processors:
        return params
    return replace(params, logits_processors=[p.clone() if isinstance(p, CloneableProcessor) else p
                                              for p in params.logits_processors])
