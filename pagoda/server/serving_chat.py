"""POST /v1/chat/completions: the model's chat template, then the same engine path as completions.

Tools (``chat_tools``) and reasoning (``reasoning_parser``) shape the output: each choice's text is
parsed as it streams (``chat_output``), so streamed and whole responses carry the same calls.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request, Response

from pagoda.errors import InvalidRequestError
from pagoda.outputs import PositionLogprobs
from pagoda.sampling_params import SamplingParams
from pagoda.server.chat_output import ChatOutput, OutputDelta
from pagoda.server.chat_rendering import conversation, template_renders_tools, with_default_tool_prompt
from pagoda.server.chat_tools import ToolRequest, tool_request_from
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
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ResponseFunctionCall,
    ResponseToolCall,
    TopLogprob,
    random_id,
)
from pagoda.server.reasoning_parser import ReasoningParser, reasoning_parser_for
from pagoda.server.request_fields import reject_unsupported_chat_fields
from pagoda.server.tool_parsers import ToolParser, tool_parser_for
from pagoda.structured.deferred_processor import DeferredGuidedProcessor
from pagoda.structured.grammar_compiler import compile_off_loop, compiler_for
from pagoda.structured.guided_decoding_params import GuidedDecodingParams


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """How one request's output is parsed."""

    tools: ToolRequest | None
    starts_in_reasoning: bool


class ChatServing(OpenAIServing):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chat_template: str | None = getattr(self.tokenizer, "chat_template", None)
        self.tool_parser: ToolParser = tool_parser_for(self.config.tool_call_parser, self.chat_template)
        self.reasoning_parser: ReasoningParser | None = (
            reasoning_parser_for(self.config.reasoning_parser) if self.config.reasoning_parser else None)

    async def create(self, raw: Request) -> Response:
        req = await parse_body(raw, ChatCompletionRequest)
        await self.check_bounds(req)
        ids, params, plan = await self.prepare(req)
        rid = random_id("chatcmpl")
        return await respond(raw, req.stream, lambda: self._stream(rid, req, ids, params, plan),
                             lambda: self._full(rid, req, ids, params, plan))

    async def prepare(self, req: ChatCompletionRequest) -> tuple[list[int], SamplingParams, OutputPlan]:
        """Validates a chat request; returns its prompt ids, sampling parameters and output plan.
        A tool or reasoning grammar compiles off the event loop, within the compile timeout."""
        self.check_model(req.model)
        reject_unsupported_chat_fields(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        tools = tool_request_from(req.tools, req.tool_choice, req.parallel_tool_calls)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self.sampling_params(req, max_tokens, logprobs)
        text = self.render_text(req.messages, req.add_generation_prompt, tools)
        starts_in_reasoning = self.reasoning_parser is not None and self.reasoning_parser.starts_inside(text)
        params = await self._constrain(params, tools, starts_in_reasoning)
        ids = await self.encode(text, add_special_tokens=False)
        self.check_prompt_ids(ids, max_tokens, "messages")
        self.check_capacity(1)
        return ids, params, OutputPlan(tools, starts_in_reasoning)

    async def render(self, messages: list[ChatMessage], add_generation_prompt: bool) -> list[int]:
        """The prompt ids of a conversation (the template adds the special tokens itself)."""
        return await self.encode(self.render_text(messages, add_generation_prompt, None), add_special_tokens=False)

    def render_text(self, messages: list[ChatMessage], add_generation_prompt: bool,
                    tools: ToolRequest | None) -> str:
        native = template_renders_tools(self.chat_template)
        conv = conversation(messages, native, self.tool_parser)
        native_tools: list[dict[str, Any]] | None = None
        if tools is not None:
            if native:
                native_tools = list(tools.tools)
            else:
                conv = with_default_tool_prompt(conv, list(tools.tools), self.tool_parser)
        try:
            return self.tokenizer.apply_chat_template(conv, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False, tools=native_tools)
        except Exception as e:  # noqa: BLE001 - a template may reject a conversation (role order, ...)
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None

    async def _constrain(self, params: SamplingParams, tools: ToolRequest | None,
                         starts_in_reasoning: bool) -> SamplingParams:
        """The request's constraint: its own structured output, or its tool choice's grammar; placed
        after the reasoning when a reasoning parser is on. Compiled on a worker thread (a grammar
        built from many tools can take seconds) within ``--grammar-compile-timeout``."""
        given = [p.spec for p in params.logits_processors if isinstance(p, DeferredGuidedProcessor)]
        spec: GuidedDecodingParams | None = given[0] if given else None
        param = "response_format"
        whole_output = spec is not None and spec.kind == "grammar"  # a user's Lark grammar spans the reasoning too
        if tools is not None and tools.mode in ("required", "named"):
            if spec is not None:
                raise InvalidRequestError(f"tool_choice {tools.mode!r} cannot be combined with a structured-output "
                                          "constraint (response_format or guided_*)", "tool_choice")
            spec, param, whole_output = tools.grammar(self.tool_parser), "tools", False
        elif tools is not None and tools.mode == "auto" and spec is None:
            spec, param, whole_output = tools.grammar(self.tool_parser), "tools", False
        if spec is None:
            return params
        if self.reasoning_parser is not None and not whole_output:
            spec = dataclasses.replace(spec, reasoning=(self.reasoning_parser.start_tag, self.reasoning_parser.end_tag,
                                                        starts_in_reasoning))
        try:
            await compile_off_loop(compiler_for(self.tokenizer), spec, self.config.grammar_compile_timeout_s)
        except InvalidRequestError as exc:
            raise InvalidRequestError(exc.message, param) from None
        others = [p for p in params.logits_processors if not isinstance(p, DeferredGuidedProcessor)]
        return dataclasses.replace(params, logits_processors=[*others, DeferredGuidedProcessor(spec)])

    def output_parser(self, plan: OutputPlan) -> ChatOutput:
        parser = self.tool_parser if plan.tools is not None and plan.tools.parses_calls else None
        return ChatOutput(parser, self.reasoning_parser, plan.starts_in_reasoning)

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

    async def _full(self, rid: str, req: ChatCompletionRequest, ids: list[int], params: SamplingParams,
                    plan: OutputPlan) -> ChatCompletionResponse:
        outputs = {j: self.output_parser(plan) for j in range(req.n)}
        tokens: dict[int, list[int]] = {j: [] for j in range(req.n)}
        lps: dict[int, list[PositionLogprobs]] = {j: [] for j in range(req.n)}
        ends: dict[int, tuple[str | None, int | str | None]] = {}
        async with aclosing(self.run(rid, [ids], params, req.priority, req.cache_salt,
                                     self.check_model(req.model))) as deltas:
            async for _, delta in deltas:
                for s in delta.samples:
                    outputs[s.index].feed(s.text, final=s.finish_reason is not None)
                    tokens[s.index].extend(s.token_ids)
                    lps[s.index].extend(s.logprobs or [])
                    if s.finish_reason is not None:
                        ends[s.index] = (s.finish_reason, s.stop_reason)
        choices = []
        for j in range(req.n):
            out = outputs[j]
            finish, stop = ends.get(j, (None, None))
            if finish is None:
                out.feed("", final=True)
            logprobs = self._logprobs(tokens[j], lps[j], req.top_logprobs or 0) if req.logprobs else None
            message = ChatResponseMessage(
                content=out.message_content(), reasoning_content=out.reasoning, reasoning=out.reasoning,
                tool_calls=[ResponseToolCall(id=c.id, function=ResponseFunctionCall(name=c.name, arguments=c.arguments))
                            for c in out.calls] or None)
            choices.append(ChatCompletionChoice(index=j, message=message, logprobs=logprobs,
                                                finish_reason=out.finish_reason(finish), stop_reason=stop))
        return ChatCompletionResponse(id=rid, model=self.model.name, choices=choices,
                                      usage=self.usage([ids], sum(len(t) for t in tokens.values())))

    async def _stream(self, rid: str, req: ChatCompletionRequest, ids: list[int], params: SamplingParams,
                      plan: OutputPlan) -> AsyncIterator[str]:
        created = int(time.time())
        num_generated = 0
        outputs = {j: self.output_parser(plan) for j in range(req.n)}

        def chunk(choice: ChatCompletionStreamChoice) -> str:
            return sse(ChatCompletionStreamResponse(id=rid, created=created, model=self.model.name,
                                                    choices=[choice]))

        try:
            # OpenAI opens each choice with the role and empty content
            for j in range(req.n):
                yield chunk(ChatCompletionStreamChoice(index=j, delta=DeltaMessage(role="assistant", content="")))
            async with aclosing(self.run(rid, [ids], params, req.priority, req.cache_salt,
                                     self.check_model(req.model))) as deltas:
                async for _, delta in deltas:
                    for s in delta.samples:
                        num_generated += len(s.token_ids)
                        out = outputs[s.index]
                        d = out.feed(s.text, final=s.finish_reason is not None)
                        logprobs = None
                        if req.logprobs and s.token_ids:
                            logprobs = self._logprobs(s.token_ids, s.logprobs or [], req.top_logprobs or 0)
                        if not d and s.finish_reason is None and logprobs is None:
                            continue  # nothing to show yet (an unresolved tail, or a marker being parsed)
                        yield chunk(ChatCompletionStreamChoice(
                            index=s.index, delta=_delta_message(d), logprobs=logprobs,
                            finish_reason=out.finish_reason(s.finish_reason), stop_reason=s.stop_reason))
            if req.stream_options is not None and req.stream_options.include_usage:
                yield sse(ChatCompletionStreamResponse(id=rid, created=created, model=self.model.name, choices=[],
                                                       usage=self.usage([ids], num_generated)))
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
            yield sse_error(e)
        yield "data: [DONE]\n\n"


def _delta_message(d: OutputDelta) -> DeltaMessage:
    calls = [DeltaToolCall(index=c.index, id=c.id, type="function" if c.id else None,
                           function=DeltaFunctionCall(name=c.name, arguments=c.arguments))
             for c in d.calls]
    return DeltaMessage(content=d.content or None, reasoning_content=d.reasoning or None,
                        reasoning=d.reasoning or None, tool_calls=calls or None)
