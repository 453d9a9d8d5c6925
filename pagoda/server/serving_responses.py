"""POST /v1/responses, stateless: a Responses request becomes a chat request (same template, tools,
reasoning and structured-output paths) and its output becomes Response items.

Supported: ``input`` (a string, or message / ``function_call`` / ``function_call_output`` items),
``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``, ``text.format`` (text,
json_object, json_schema), function ``tools`` and ``tool_choice``, ``parallel_tool_calls``, and
streaming events. Nothing is stored: ``store: true``, ``previous_response_id``, ``conversation`` and
``background`` are 400s until stored responses exist.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict

from pagoda.errors import InvalidRequestError
from pagoda.sampling_params import SamplingParams
from pagoda.server.chat_output import ChatOutput
from pagoda.server.openai_serving import parse_body, respond, sse_error
from pagoda.server.protocol import ChatCompletionRequest
from pagoda.server.serving_chat import ChatServing, OutputPlan

_UNSUPPORTED = {
    "previous_response_id": "stored responses are not supported: send the whole conversation in 'input'",
    "conversation": "stored conversations are not supported: send the whole conversation in 'input'",
    "prompt": "stored prompts are not supported",
    "background": "background responses are not supported",
    "reasoning": "reasoning options are not supported (use --reasoning-parser to get a model's reasoning)",
}


# Pagoda's (vLLM's) sampling and structured-output extensions, passed on to the chat request
_EXTENSIONS = ("seed", "top_k", "min_p", "repetition_penalty", "stop", "ignore_eos", "min_tokens", "priority",
               "cache_salt", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_whitespace")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: str | None = None
    truncation: str | None = None


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesServing(ChatServing):
    async def create_response(self, raw: Request) -> Response:
        req = await parse_body(raw, ResponsesRequest)
        chat = _chat_request(req)
        await self.check_bounds(chat)
        ids, params, plan = await self.prepare(chat)
        rid = _id("resp")
        return await respond(raw, req.stream, lambda: self._events(rid, req, ids, params, plan),
                             lambda: self._whole(rid, req, ids, params, plan))

    async def _run(self, rid: str, req: ResponsesRequest, ids: list[int], params: SamplingParams,
                   out: ChatOutput) -> AsyncIterator[tuple[Any, Any]]:
        async with aclosing(self.run(rid, [ids], params, lora_request=self.check_model(req.model))) as deltas:
            async for _, delta in deltas:
                for s in delta.samples:
                    yield s, out.feed(s.text, final=s.finish_reason is not None)

    async def _whole(self, rid: str, req: ResponsesRequest, ids: list[int], params: SamplingParams,
                     plan: OutputPlan) -> _Json:
        out = self.output_parser(plan)
        num_generated, finish = 0, None
        async for s, _ in self._run(rid, req, ids, params, out):
            num_generated += len(s.token_ids)
            finish = s.finish_reason or finish
        if finish is None:
            out.feed("", final=True)
        items = []
        if out.reasoning is not None:
            items.append(_reasoning_item(_id("rs"), out.reasoning))
        if out.message_content() is not None and (out.content or not out.calls):
            items.append(_message_item(_id("msg"), out.content))
        items += [_call_item(_id("fc"), c.id, c.name, c.arguments) for c in out.calls]
        return _Json(self._response(rid, req, items, finish, len(ids), num_generated))

    def _response(self, rid: str, req: ResponsesRequest, output: list[dict[str, Any]], finish: str | None,
                  num_prompt: int, num_generated: int | None) -> dict[str, Any]:
        done = num_generated is not None
        generated = num_generated or 0
        status = "in_progress" if not done else ("incomplete" if finish == "length" else "completed")
        return {
            "id": rid, "object": "response", "created_at": int(time.time()), "model": self.model.name,
            "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "metadata": req.metadata or {},
            "parallel_tool_calls": req.parallel_tool_calls is not False, "tool_choice": req.tool_choice or "auto",
            "tools": req.tools or [], "text": req.text or {"format": {"type": "text"}}, "store": False,
            "output": output,
            "usage": {"input_tokens": num_prompt, "output_tokens": generated,
                      "total_tokens": num_prompt + generated, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}} if done else None,
        }

    async def _events(self, rid: str, req: ResponsesRequest, ids: list[int], params: SamplingParams,
                      plan: OutputPlan) -> AsyncIterator[str]:
        seq = 0

        def event(kind: str, **payload: Any) -> str:
            nonlocal seq
            seq += 1
            return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq - 1, **payload})}\n\n"

        out = self.output_parser(plan)
        items: list[dict[str, Any]] = []  # finished items, in output order
        open_item: dict[str, Any] | None = None  # the item receiving deltas
        calls: dict[int, dict[str, Any]] = {}  # call index -> its item

        def close() -> list[str]:
            nonlocal open_item
            if open_item is None:
                return []
            item, open_item = open_item, None
            index = len(items)
            items.append(item)
            frames = []
            if item["type"] == "message":
                part = item["content"][0]
                frames += [event("response.output_text.done", item_id=item["id"], output_index=index,
                                 content_index=0, text=part["text"], logprobs=[]),
                           event("response.content_part.done", item_id=item["id"], output_index=index,
                                 content_index=0, part=part)]
            elif item["type"] == "reasoning":
                frames.append(event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                    content_index=0, text=item["content"][0]["text"]))
            else:
                frames.append(event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                    name=item["name"], arguments=item["arguments"]))
            item["status"] = "completed"
            return [*frames, event("response.output_item.done", output_index=index, item=item)]

        def start(item: dict[str, Any]) -> list[str]:
            nonlocal open_item
            frames = close()
            open_item = item
            index = len(items)
            frames.append(event("response.output_item.added", output_index=index, item={**item, "status": "in_progress"}))
            if item["type"] == "message":
                frames.append(event("response.content_part.added", item_id=item["id"], output_index=index,
                                    content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
            return frames

        try:
            yield event("response.created", response=self._response(rid, req, [], None, len(ids), None))
            yield event("response.in_progress", response=self._response(rid, req, [], None, len(ids), None))
            num_generated, finish = 0, None
            async for s, d in self._run(rid, req, ids, params, out):
                num_generated += len(s.token_ids)
                finish = s.finish_reason or finish
                frames: list[str] = []
                if d.reasoning:
                    if open_item is None or open_item["type"] != "reasoning":
                        frames += start(_reasoning_item(_id("rs"), ""))
                    assert open_item is not None
                    open_item["content"][0]["text"] += d.reasoning
                    frames.append(event("response.reasoning_text.delta", item_id=open_item["id"],
                                        output_index=len(items), content_index=0, delta=d.reasoning))
                if d.content:
                    if open_item is None or open_item["type"] != "message":
                        frames += start(_message_item(_id("msg"), ""))
                    assert open_item is not None
                    open_item["content"][0]["text"] += d.content
                    frames.append(event("response.output_text.delta", item_id=open_item["id"],
                                        output_index=len(items), content_index=0, delta=d.content, logprobs=[]))
                for c in d.calls:
                    if c.id is not None:
                        calls[c.index] = _call_item(_id("fc"), c.id, c.name or "", "")
                        frames += start(calls[c.index])
                    item = calls[c.index]
                    if c.arguments:
                        item["arguments"] += c.arguments
                        frames.append(event("response.function_call_arguments.delta", item_id=item["id"],
                                            output_index=len(items), delta=c.arguments))
                for f in frames:
                    yield f
            for f in close():
                yield f
            final = self._response(rid, req, items, finish, len(ids), num_generated)
            yield event("response.incomplete" if final["status"] == "incomplete" else "response.completed",
                        response=final)
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
            yield "event: error\n" + sse_error(e)


class _Json:
    """A prepared JSON body, dumped as ``respond`` dumps pydantic models."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return self.body


def _message_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "status": "completed", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": "completed"}


def _chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request a Responses request means; InvalidRequestError naming a field it cannot honour."""
    extra = req.model_extra or {}
    for name, why in _UNSUPPORTED.items():
        if extra.get(name) is not None:
            raise InvalidRequestError(f"{name}: {why}", name)
    if req.store:
        raise InvalidRequestError("store: stored responses are not supported; send store: false", "store")
    if req.truncation not in (None, "disabled"):
        raise InvalidRequestError("truncation: only 'disabled' is supported", "truncation")
    if extra.get("include"):
        raise InvalidRequestError("include: no additional output data is supported", "include")
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for i, item in enumerate(req.input):
            messages += _item_messages(item, i, messages)
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": False,
                            "max_completion_tokens": req.max_output_tokens, "temperature": req.temperature,
                            "top_p": req.top_p, "parallel_tool_calls": req.parallel_tool_calls}
    body.update({k: extra[k] for k in _EXTENSIONS if k in extra})
    if req.tools:
        body["tools"] = [_chat_tool(t, i) for i, t in enumerate(req.tools)]
    if req.tool_choice is not None:
        tc = req.tool_choice
        body["tool_choice"] = ({"type": "function", "function": {"name": tc.get("name")}}
                               if isinstance(tc, dict) and tc.get("type") == "function" else tc)
    fmt = (req.text or {}).get("format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.get("name", "response"), "schema": fmt.get("schema"), "strict": fmt.get("strict")}}
        elif kind in ("text", "json_object"):
            body["response_format"] = {"type": kind}
        else:
            raise InvalidRequestError(f"text.format type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                                      "text")
    return ChatCompletionRequest.model_validate_json(json.dumps({k: v for k, v in body.items() if v is not None}))


def _item_messages(item: dict[str, Any], i: int, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kind = item.get("type", "message")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
                    what = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise InvalidRequestError(f"input[{i}]: content parts of type {what!r} are not supported",
                                              "input")
                texts.append(part.get("text", ""))
            content = "".join(texts)
        if not isinstance(content, str):
            raise InvalidRequestError(f"input[{i}].content must be a string or a list of text parts", "input")
        return [{"role": item.get("role", "user"), "content": content}]
    if kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
            last["tool_calls"].append(call)  # consecutive calls are one assistant turn
            return []
        return [{"role": "assistant", "content": None, "tool_calls": [call]}]
    if kind == "function_call_output":
        output = item.get("output")
        return [{"role": "tool", "tool_call_id": item.get("call_id"),
                 "content": output if isinstance(output, str) else json.dumps(output)}]
    if kind == "reasoning":
        return []  # stateless: earlier reasoning is not shown to the model again
    raise InvalidRequestError(f"input[{i}]: items of type {kind!r} are not supported", "input")


def _chat_tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidRequestError(f"tools[{i}]: only tools of type 'function' are supported, got {tool.get('type')!r}",
                                  "tools")
    fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
    return {"type": "function", "function": fn}
