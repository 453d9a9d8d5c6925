"""POST /v1/completions: text completion, batch prompts, echo, logprobs (prompt ones with echo)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import Request, Response

from pagoda.outputs import PositionLogprobs
from pagoda.sampling_params import SamplingParams
from pagoda.server.errors import APIError
from pagoda.server.messages import SampleDelta
from pagoda.server.openai_serving import (
    OpenAIServing,
    parse_body,
    respond,
    sse,
    sse_error,
)
from pagoda.server.protocol import (
    CompletionChoice,
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    random_id,
)


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, s: SampleDelta) -> None:
        self.text.append(s.text)
        self.token_ids.extend(s.token_ids)
        if s.logprobs:
            self.logprobs.extend(s.logprobs)
        if s.finish_reason is not None:
            self.finish_reason, self.stop_reason = s.finish_reason, s.stop_reason


class CompletionServing(OpenAIServing):
    async def create(self, raw: Request) -> Response:
        req = await parse_body(raw, CompletionRequest)
        await self.check_bounds(req)
        self.check_model(req.model)
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of is not supported (only best_of == n)", param="best_of")
        prompts = await self._prompt_ids(req)
        prompt_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
        params = self.sampling_params(req, req.max_tokens, req.logprobs, prompt_logprobs)
        for ids in prompts:
            self.check_prompt_ids(ids, req.max_tokens, "prompt")
        self.check_capacity(len(prompts))
        rid = random_id("cmpl")
        return await respond(raw, req.stream, lambda: self._stream(rid, req, prompts, params),
                             lambda: self._full(rid, req, prompts, params))

    async def _prompt_ids(self, req: CompletionRequest) -> list[list[int]]:
        p = req.prompt
        if isinstance(p, str):
            return [await self.encode(p, req.add_special_tokens)]
        if not p:
            raise APIError(400, "the prompt is empty", param="prompt")
        if isinstance(p[0], int):
            return [list(p)]
        if isinstance(p[0], str):
            return [await self.encode(s, req.add_special_tokens) for s in p]
        return [list(ids) for ids in p]

    def _logprobs(self, token_ids: list[int], lps: list[PositionLogprobs | None], top_n: int,
                  offset: int) -> CompletionLogProbs:
        out = CompletionLogProbs()
        for tok, lp in zip(token_ids, lps):
            text = self.token_text(tok, lp)
            out.tokens.append(text)
            out.text_offset.append(offset)
            offset += len(text)
            if lp is None:  # the first prompt token has nothing to be conditioned on
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(lp[tok].logprob if tok in lp else None)
            ranked = sorted(lp.items(), key=lambda kv: kv[1].rank)
            top = {self.token_text(t, lp): v.logprob for t, v in ranked if v.rank <= top_n or t == tok}
            out.top_logprobs.append(top)
        return out

    async def _full(self, rid: str, req: CompletionRequest, prompts: list[list[int]],
                    params: SamplingParams) -> CompletionResponse:
        choices: dict[tuple[int, int], _Choice] = {}
        prompt_lps: dict[int, list[PositionLogprobs | None]] = {}
        async with aclosing(self.run(rid, prompts, params, req.priority, req.cache_salt,
                                     self.check_model(req.model))) as deltas:
            async for i, delta in deltas:
                if delta.prompt_logprobs is not None:
                    prompt_lps[i] = delta.prompt_logprobs
                for s in delta.samples:
                    choices.setdefault((i, s.index), _Choice()).add(s)
        out: list[CompletionChoice] = []
        for i, ids in enumerate(prompts):
            echo = self.tokenizer.decode(ids, skip_special_tokens=False) if req.echo else ""
            for j in range(req.n):
                c = choices.get((i, j), _Choice())
                logprobs = None
                if req.logprobs is not None:
                    tokens = list(c.token_ids)
                    lps: list[PositionLogprobs | None] = list(c.logprobs)
                    if req.echo:
                        tokens = ids + tokens
                        lps = list(prompt_lps.get(i) or [None] * len(ids)) + lps
                    logprobs = self._logprobs(tokens, lps, req.logprobs, 0)
                out.append(CompletionChoice(index=i * req.n + j, text=echo + "".join(c.text), logprobs=logprobs,
                                            finish_reason=c.finish_reason, stop_reason=c.stop_reason))
        num_generated = sum(len(c.token_ids) for c in choices.values())
        return CompletionResponse(id=rid, model=self.model.name, choices=out,
                                  usage=self.usage(prompts, num_generated))

    async def _stream(self, rid: str, req: CompletionRequest, prompts: list[list[int]],
                      params: SamplingParams) -> AsyncIterator[str]:
        created = int(time.time())
        num_generated = 0
        offsets: dict[int, int] = {}  # choice index -> characters sent (logprobs text_offset)
        echoed: set[int] = set()

        def chunk(index: int, text: str, logprobs: CompletionLogProbs | None = None,
                  finish_reason: str | None = None, stop_reason: int | str | None = None) -> str:
            offsets[index] = offsets.get(index, 0) + len(text)
            return sse(CompletionStreamResponse(id=rid, created=created, model=self.model.name, choices=[
                CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason,
                                 stop_reason=stop_reason)]))

        try:
            async with aclosing(self.run(rid, prompts, params, req.priority, req.cache_salt,
                                     self.check_model(req.model))) as deltas:
                async for i, delta in deltas:
                    if req.echo and i not in echoed:
                        echoed.add(i)
                        ids = prompts[i]
                        text = self.tokenizer.decode(ids, skip_special_tokens=False)
                        for j in range(req.n):
                            lps = None
                            if req.logprobs is not None:
                                lps = self._logprobs(ids, list(delta.prompt_logprobs or [None] * len(ids)),
                                                     req.logprobs, 0)
                            yield chunk(i * req.n + j, text, lps)
                    for s in delta.samples:
                        num_generated += len(s.token_ids)
                        index = i * req.n + s.index
                        lps = None
                        if req.logprobs is not None:
                            sample_lps: list[PositionLogprobs | None] = (
                                list(s.logprobs) if s.logprobs else [None] * len(s.token_ids))
                            lps = self._logprobs(s.token_ids, sample_lps, req.logprobs, offsets.get(index, 0))
                        if not s.text and s.finish_reason is None and not (lps and lps.tokens):
                            continue  # the engine holds back an unresolved tail: nothing to show yet
                        yield chunk(index, s.text, lps, s.finish_reason, s.stop_reason)
            if req.stream_options is not None and req.stream_options.include_usage:
                yield sse(CompletionStreamResponse(id=rid, created=created, model=self.model.name, choices=[],
                                                   usage=self.usage(prompts, num_generated)))
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
            yield sse_error(e)
        yield "data: [DONE]\n\n"
