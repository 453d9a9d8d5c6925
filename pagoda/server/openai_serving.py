"""What completions and chat completions share: admission checks, tokenization, sampling
parameters, running several engine requests as one response, and SSE framing.

Tokenization happens here, in the HTTP process (as in vLLM): the engine receives token
ids, and the server knows the prompt length before anything is queued, so length errors
are 400s rather than failed streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from pagoda.errors import InvalidRequestError
from pagoda.lora.request import LoRARequest
from pagoda.outputs import PositionLogprobs
from pagoda.sampling_params import SamplingParams
from pagoda.server.config import ServerConfig
from pagoda.server.engine_client import EngineClient, EngineDeadError, EngineRequestError
from pagoda.server.errors import APIError
from pagoda.server.lora_models import LoRAModels
from pagoda.server.messages import RequestDelta
from pagoda.server.metrics import ServerMetrics
from pagoda.server.prompt_tokenizer import PromptTokenizer
from pagoda.server.protocol import ErrorInfo, ErrorResponse, UsageInfo
from pagoda.server.request_limits import check_guided_spec, check_request_bounds
from pagoda.server.sse_response import SSEResponse
from pagoda.structured.openai_fields import guided_processors_for_request
from pagoda.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # torch generators take 64-bit seeds


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the served name clients pass as `model`
    max_model_len: int
    vocab_size: int
    loras: LoRAModels | None = None  # with LoRA: the adapters clients may also pass as `model`


class ClientDisconnected(Exception):
    pass


async def parse_body(request: Request, model: type[T]) -> T:
    """Strict JSON parsing with OpenAI-shaped 400s (FastAPI's own parsing would coerce types)."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise APIError.from_validation(e) from None


async def until_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Awaits ``work`` unless the client goes away first, in which case ``work`` is cancelled
    (and with it the engine requests it runs). Non-streaming responses need this: nothing is
    sent before the end, so a disconnect would otherwise go unnoticed."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watcher.cancel()
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


async def respond(raw: Request, stream: bool, events: Callable[[], AsyncIterator[Any]],
                  body: Callable[[], Awaitable[Any]]) -> Response:
    """A streamed (SSE) or whole JSON response; a client gone before the body is ready gets 499
    and its request is aborted (by ``until_disconnected``)."""
    if stream:
        return SSEResponse(events())
    try:
        result = await until_disconnected(raw, body())
    except ClientDisconnected:
        return Response(status_code=499)
    return JSONResponse(result.model_dump(mode="json"))


def sse(payload: BaseModel) -> str:
    """One server-sent event: a ``data:`` line and the blank line that ends it."""
    return f"data: {payload.model_dump_json()}\n\n"


def error_for(e: BaseException) -> APIError:
    """Maps an exception raised while generating to the API error the client sees."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, InvalidRequestError):
        return APIError.from_invalid_request(e)
    if isinstance(e, EngineDeadError):
        return APIError(503, f"engine is not running: {e}", code="engine_dead")
    if isinstance(e, EngineRequestError):
        return APIError(500, str(e), code="engine_error")
    logger.exception("unexpected error while generating", exc_info=e)
    return APIError(500, f"internal server error: {type(e).__name__}: {e}")


def sse_error(e: BaseException) -> str:
    err = error_for(e)
    return sse(ErrorResponse(error=ErrorInfo(message=err.message, type=err.type, param=err.param,
                                             code=err.code or err.status)))


class OpenAIServing:
    def __init__(self, client: EngineClient, tokenizer: Tokenizer, model: ModelInfo,
                 config: ServerConfig, metrics: ServerMetrics) -> None:
        self.client = client
        self.tokenizer = tokenizer
        self.model = model
        self.config = config
        self.metrics = metrics
        self.prompt_tokenizer = PromptTokenizer(tokenizer)

    # --- admission ---

    def check_model(self, name: str | None) -> LoRARequest | None:
        """The adapter that ``model`` names (None: the base model)."""
        # The issue asks for 400 (OpenAI and vLLM answer 404); the code is OpenAI's "model_not_found".
        if name is None or name == self.model.name:
            return None
        lora = self.model.loras.get(name) if self.model.loras is not None else None
        if lora is None:
            raise APIError(400, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return lora

    def check_capacity(self, num_new: int) -> None:
        if not self.client.alive:
            raise APIError(503, f"engine is not running: {self.client.dead_reason or 'not started'}",
                           code="engine_dead")
        if self.client.num_waiting + num_new > self.config.max_waiting:
            raise APIError(503, f"server overloaded: {self.client.num_waiting} requests waiting "
                                f"(limit {self.config.max_waiting}); retry later", code="server_overloaded",
                           headers={"Retry-After": str(self.config.retry_after_s)})

    async def check_bounds(self, req: Any) -> None:
        """The request's size limits, and its structured-output spec compiled off the event loop
        within the compile timeout (400s naming the field); before any synchronous work."""
        check_request_bounds(req, self.config)
        await check_guided_spec(req, self.tokenizer, self.config)

    # --- prompts ---

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A prompt's token ids; a long prompt is tokenized off the event loop (see PromptTokenizer)."""
        return await self.prompt_tokenizer.encode(text, add_special_tokens)

    def check_prompt_ids(self, ids: list[int], max_tokens: int | None, param: str) -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param=param)
        limit = self.model.max_model_len
        # the length first: an over-long prompt (up to a million ids) is refused without a pass over its ids
        if len(ids) >= limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your "
                                f"prompt has {len(ids)} tokens; at most {limit - 1} leave room to generate.",
                           param=param, code="context_length_exceeded")
        bad = next((t for t in ids if not 0 <= t < self.model.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is out of range [0, {self.model.vocab_size})", param=param)
        if max_tokens is not None and len(ids) + max_tokens > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you "
                                f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, "
                                f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")

    def token_text(self, token_id: int, lp: PositionLogprobs | None = None) -> str:
        decoded = lp[token_id].decoded_token if lp is not None and token_id in lp else None
        if decoded is not None:
            return decoded
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    # --- sampling ---

    def sampling_params(self, req: Any, max_tokens: int | None, logprobs: int | None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        """SamplingParams from the fields both endpoints share; raises InvalidRequestError (400).
        Structured-output fields were compiled by ``check_bounds`` (off the event loop), so a bad spec
        never reaches the engine."""
        check_request_bounds(req, self.config)
        if req.seed is not None and not _INT64_MIN <= req.seed <= _INT64_MAX - req.n:
            raise InvalidRequestError("seed must be a 64-bit signed integer", "seed")
        bias: dict[int, float] | None = None
        if req.logit_bias is not None:
            bias = {}
            for k, v in req.logit_bias.items():
                try:
                    bias[int(k)] = v
                except ValueError:
                    raise InvalidRequestError(f"logit_bias key {k!r} is not a token id", "logit_bias") from None
        return SamplingParams(
            n=req.n,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if req.top_k is None else req.top_k,
            min_p=0.0 if req.min_p is None else req.min_p,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty,
            logit_bias=bias,
            seed=req.seed,
            stop=req.stop,
            stop_token_ids=req.stop_token_ids,
            include_stop_str_in_output=req.include_stop_str_in_output,
            max_tokens=max_tokens,
            min_tokens=req.min_tokens,
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=req.skip_special_tokens,
            logits_processors=guided_processors_for_request(req),
        )

    # --- running engine requests ---

    async def run(self, base_id: str, prompts: list[list[int]], params: SamplingParams, priority: int = 0,
                  cache_salt: str | None = None, lora_request: LoRARequest | None = None
                  ) -> AsyncGenerator[tuple[int, RequestDelta], None]:
        """Runs one engine request per prompt and yields ``(prompt index, delta)`` as they come.

        Leaving the iterator early cancels every request that has not finished (the engine
        aborts them and frees their blocks). The first failure ends the whole response.
        """
        arrival = time.monotonic()
        if len(prompts) == 1:  # the common case: no merging tasks
            async with aclosing(self._one(f"{base_id}-0", prompts[0], params, priority, cache_salt, arrival,
                                          lora_request)) as deltas:
                async for delta in deltas:
                    yield 0, delta
            return
        merged: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(i: int, ids: list[int]) -> None:
            try:
                async with aclosing(self._one(f"{base_id}-{i}", ids, params, priority, cache_salt, arrival,
                                              lora_request)) as deltas:
                    async for delta in deltas:
                        merged.put_nowait((i, delta))
                merged.put_nowait((i, done))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
                merged.put_nowait((i, e))

        tasks = [asyncio.ensure_future(pump(i, ids)) for i, ids in enumerate(prompts)]
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await merged.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, request_id: str, ids: list[int], params: SamplingParams, priority: int,
                   cache_salt: str | None, arrival: float, lora_request: LoRARequest | None = None
                   ) -> AsyncGenerator[RequestDelta, None]:
        timer = self.metrics.track(arrival)
        try:
            async with aclosing(self.client.generate(request_id, ids, params, priority=priority,
                                                     arrival_time=arrival, cache_salt=cache_salt,
                                                     lora_request=lora_request)) as deltas:
                async for delta in deltas:
                    timer.on_delta(delta)
                    yield delta
        except (InvalidRequestError, APIError):
            raise
        except Exception as e:
            self.metrics.count_failure(error_for(e).status)
            raise

    @staticmethod
    def usage(prompts: list[list[int]], num_generated: int) -> UsageInfo:
        num_prompt = sum(len(p) for p in prompts)
        return UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_generated,
                         total_tokens=num_prompt + num_generated)
