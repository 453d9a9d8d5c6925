"""The OpenAI-compatible request fields that ask for structured output, turned into a spec.

``response_format``: ``{"type": "text" | "json_object"}`` or ``{"type": "json_schema", "json_schema":
{"name": ..., "schema": {...}, "strict": bool}}`` (the schema is enforced whether ``strict`` is true
or not: we can, so we do). Pagoda's (vLLM's) extensions: ``guided_json``, ``guided_regex``,
``guided_choice``, ``guided_grammar`` (Lark or GBNF), ``guided_whitespace`` ("compact"/"flexible").
"""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel

from pagoda.errors import InvalidRequestError
from pagoda.sampling_params import LogitsProcessor
from pagoda.structured.deferred_processor import DeferredGuidedProcessor
from pagoda.structured.guided_decoding_params import GuidedDecodingParams, Whitespace

_EXTENSIONS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def request_field(req: Any, name: str) -> Any:
    value = req.get(name) if isinstance(req, dict) else getattr(req, name, None)
    if value is None and not isinstance(req, dict):
        value = (getattr(req, "model_extra", None) or {}).get(name)  # pydantic extra="allow" fields
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, exclude_none=True)
    return value


def guided_spec_from_request(req: Any) -> GuidedDecodingParams | None:
    """The spec a request (pydantic model or dict) asks for, or None; InvalidRequestError naming the
    field for a malformed or conflicting one."""
    given: list[tuple[str, dict[str, Any]]] = []
    fmt = request_field(req, "response_format")
    if fmt is not None:
        kwargs = _response_format(fmt)
        if kwargs is not None:
            given.append(("response_format", kwargs))
    values = {name: request_field(req, name) for name in _EXTENSIONS}
    if values["guided_json"] is not None:
        given.append(("guided_json", {"json": values["guided_json"]}))
    if values["guided_regex"] is not None:
        given.append(("guided_regex", {"regex": values["guided_regex"]}))
    if values["guided_choice"] is not None:
        choice = values["guided_choice"]
        if not isinstance(choice, list):
            raise InvalidRequestError("guided_choice must be a list of strings", "guided_choice")
        given.append(("guided_choice", {"choice": tuple(choice)}))
    if values["guided_grammar"] is not None:
        given.append(("guided_grammar", {"grammar": values["guided_grammar"]}))
    if not given:
        return None
    if len(given) > 1:
        names = ", ".join(name for name, _ in given)
        raise InvalidRequestError(f"give at most one structured-output constraint, got {names}", given[1][0])
    param, kwargs = given[0]
    # any string here: GuidedDecodingParams refuses what is not a Whitespace
    whitespace = cast(Whitespace, request_field(req, "guided_whitespace") or "compact")
    try:
        return GuidedDecodingParams(**kwargs, whitespace=whitespace)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param if exc.param != "guided_decoding" else exc.param) from None


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if not isinstance(fmt, dict):
        raise InvalidRequestError("response_format must be an object", "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise InvalidRequestError("response_format json_schema needs a json_schema object with a 'schema'",
                                      "response_format")
        if not isinstance(spec["schema"], (dict, bool)):
            raise InvalidRequestError("response_format json_schema.schema must be a JSON schema object",
                                      "response_format")
        return {"json": spec["schema"]}
    raise InvalidRequestError(f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                              "response_format")


def guided_processors_for_request(req: Any) -> list[LogitsProcessor]:
    """For a server endpoint: the picklable stand-in the engine process binds
    (``bind_deferred_processors``) for what ``req`` asks; empty when nothing is asked. The caller has
    validated the spec (``pagoda.server.request_limits.check_guided_spec`` compiles it off the event
    loop: compiling here could block the loop for as long as a spec evicted from the cache takes)."""
    spec = guided_spec_from_request(req)
    return [] if spec is None else [DeferredGuidedProcessor(spec)]
