"""Bounds on what one request may ask for, checked before any work is queued: samples, logprobs,
stop strings, the size and nesting of a structured-output spec, and its compile time.

Each violation is an ``APIError`` 400 naming the field; the limits are ``ServerConfig`` options.
(Prompt length is bounded by the model's context in ``OpenAIServing.check_prompt_ids`` and the
body by ``SlowClientGuard``.)
"""

from __future__ import annotations

import json
from typing import Any

from pagoda.errors import InvalidRequestError
from pagoda.server.config import ServerConfig
from pagoda.server.errors import APIError
from pagoda.structured.grammar_compiler import compile_off_loop, compiler_for
from pagoda.structured.openai_fields import guided_spec_from_request, request_field
from pagoda.tokenizer import Tokenizer


def check_request_bounds(req: Any, config: ServerConfig) -> None:
    """n, logprobs / top_logprobs and stop strings within the server's limits."""
    n = getattr(req, "n", 1)
    if n is not None and not 1 <= n <= config.max_n:
        raise APIError(400, f"n must be in [1, {config.max_n}], got {n}", param="n")
    for name in ("logprobs", "top_logprobs"):
        value = getattr(req, name, None)
        if isinstance(value, bool) or value is None:
            continue  # chat's logprobs is a flag
        if not 0 <= value <= config.max_logprobs:
            raise APIError(400, f"{name} must be in [0, {config.max_logprobs}], got {value}", param=name)
    stop = getattr(req, "stop", None)
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    if len(stops) > config.max_stop_strings:
        raise APIError(400, f"at most {config.max_stop_strings} stop strings, got {len(stops)}", param="stop")
    longest = max((len(s) for s in stops), default=0)
    if longest > config.max_stop_chars:
        raise APIError(400, f"a stop string may have at most {config.max_stop_chars} characters, got {longest}",
                       param="stop")


async def check_guided_spec(req: Any, tokenizer: Tokenizer, config: ServerConfig) -> None:
    """The structured-output spec ``req`` asks for, if any, within the size and nesting limits and
    compiled off the event loop within ``grammar_compile_timeout_s`` (the handler's own compile is
    then a cache hit). Raises a 400 naming the field."""
    try:
        spec = guided_spec_from_request(req)
    except InvalidRequestError as e:
        raise APIError.from_invalid_request(e) from None
    if spec is None:
        return
    param = "response_format" if request_field(req, "response_format") not in (None, {"type": "text"}) else spec.param
    size = spec.num_chars
    if size > config.max_spec_chars:
        raise APIError(400, f"the structured-output spec has {size} characters; the limit is {config.max_spec_chars} "
                            "(--max-spec-chars)", param=param, code="spec_too_large")
    if spec.json is not None:
        depth = _depth(json.loads(spec.json))
        if depth > config.max_schema_depth:
            raise APIError(400, f"the JSON schema nests {depth} levels deep; the limit is {config.max_schema_depth} "
                                "(--max-schema-depth)", param=param, code="schema_too_deep")
    try:
        await compile_off_loop(compiler_for(tokenizer), spec, config.grammar_compile_timeout_s)
    except InvalidRequestError as e:
        raise APIError(400, e.message, param=param) from None


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, iteratively (a deep one must not overflow Python's stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest
