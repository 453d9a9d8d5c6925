"""POST /v1/chat/completions: the model's chat template, then the same engine path as completions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request, Response

from pagoda.outputs import PositionLogprobs
from pagoda.sampling_params import SamplingParams
from pagoda.server.errors import APIError
from pagoda.server.openai_serving import (
    OpenAIServing,
    parse_body,
    respond,
    sse,
    sse_error,
)
from pagoda.server.protocol import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    ChatResponseMessage,
    ChatTokenLogprob,
    DeltaMessage,
    TopLogprob,
    random_id,
)


class ChatServing(OpenAIServing):
    async def create(self, raw: Request) -> Response:
        req = await parse_body(raw, ChatCompletionRequest)
        self.check_model(req.model)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self.sampling_params(req, max_tokens, logprobs)
        ids = self.render(req.messages, req.add_generation_prompt)
        self.check_prompt_ids(ids, max_tokens, "messages")
        self.check_capacity(1)
        rid = random_id("chatcmpl")
        return await respond(raw, req.stream, lambda: self._stream(rid, req, ids, params),
                             lambda: self._full(rid, req, ids, params))

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool) -> list[int]:
        """Applies the chat template and tokenizes; the template adds the special tokens itself."""
        conversation = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                        for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False)
        except Exception as e:  # noqa: BLE001 - a template may reject a conversation (role order, ...)
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _logprobs(self, token_ids: list[int], lps: list[PositionLogprobs], top_n: int) -> ChatChoiceLogprobs:
        content = []
        for tok, lp in zip(token_ids, lps):
            text = self.token_text(tok, lp)
            ranked = sorted(lp.items(), key=lambda kv: kv[1].rank)[:top_n]
            content.append(ChatTokenLogprob(
                token=text, logprob=lp[tok].logprob if tok in lp else float("-inf"), bytes=list(text.encode()),
                top_logprobs=[TopLogprob(token=(t := self.token_text(i, lp)), logprob=v.logprob,
                                         bytes=list(t.encode())) for i, v in ranked]))
        return ChatChoiceLogprobs(content=content)

    async def _full(self, rid: str, req: ChatCompletionRequest, ids: list[int],
                    params: SamplingParams) -> ChatCompletionResponse:
        texts: dict[int, list[str]] = {j: [] for j in range(req.n)}
        tokens: dict[int, list[int]] = {j: [] for j in range(req.n)}
        lps: dict[int, list[PositionLogprobs]] = {j: [] for j in range(req.n)}
        ends: dict[int, tuple[str | None, int | str | None]] = {}
        async with aclosing(self.run(rid, [ids], params, req.priority, req.cache_salt)) as deltas:
            async for _, delta in deltas:
                for s in delta.samples:
                    texts[s.index].append(s.text)
                    tokens[s.index].extend(s.token_ids)
                    lps[s.index].extend(s.logprobs or [])
                    if s.finish_reason is not None:
                        ends[s.index] = (s.finish_reason, s.stop_reason)
        choices = []
        for j in range(req.n):
            finish, stop = ends.get(j, (None, None))
            logprobs = self._logprobs(tokens[j], lps[j], req.top_logprobs or 0) if req.logprobs else None
            choices.append(ChatCompletionChoice(index=j, message=ChatResponseMessage(content="".join(texts[j])),
                                                logprobs=logprobs, finish_reason=finish, stop_reason=stop))
        return ChatCompletionResponse(id=rid, model=self.model.name, choices=choices,
                                      usage=self.usage([ids], sum(len(t) for t in tokens.values())))

    async def _stream(self, rid: str, req: ChatCompletionRequest, ids: list[int],
                      params: SamplingParams) -> AsyncIterator[str]:
        created = int(time.time())
        num_generated = 0

        def chunk(choice: ChatCompletionStreamChoice) -> str:
            return sse(ChatCompletionStreamResponse(id=rid, created=created, model=self.model.name,
                                                    choices=[choice]))

        try:
            # OpenAI opens each choice with the role and empty content
            for j in range(req.n):
                yield chunk(ChatCompletionStreamChoice(index=j, delta=DeltaMessage(role="assistant", content="")))
            async with aclosing(self.run(rid, [ids], params, req.priority, req.cache_salt)) as deltas:
                async for _, delta in deltas:
                    for s in delta.samples:
                        num_generated += len(s.token_ids)
                        logprobs = None
                        if req.logprobs and s.token_ids:
                            logprobs = self._logprobs(s.token_ids, s.logprobs or [], req.top_logprobs or 0)
                        if not s.text and s.finish_reason is None and logprobs is None:
                            continue  # the engine holds back an unresolved tail: nothing to show yet
                        yield chunk(ChatCompletionStreamChoice(
                            index=s.index, delta=DeltaMessage(content=s.text or None) if s.text else DeltaMessage(),
                            logprobs=logprobs, finish_reason=s.finish_reason, stop_reason=s.stop_reason))
            if req.stream_options is not None and req.stream_options.include_usage:
                yield sse(ChatCompletionStreamResponse(id=rid, created=created, model=self.model.name, choices=[],
                                                       usage=self.usage([ids], num_generated)))
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
            yield sse_error(e)
        yield "data: [DONE]\n\n"
