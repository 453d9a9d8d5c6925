"""The tool-call format boundary: parse a model's output into prose and calls, and constrain it.

A ``ToolParser`` knows one format (where calls start, how each call is spelled). It answers two
questions: ``parse(text, final)``, what the output so far says, and ``grammar(...)``, a Lark grammar
(llguidance dialect) that only allows outputs it can parse.

Contract of ``parse``: it is called on growing prefixes of one output, then once with the whole
output and ``final=True``; across those calls ``content`` only grows (each is a prefix of the next),
calls only get appended, a call's ``name`` never changes once set and its ``arguments`` only grow.
So the deltas between successive parses are a valid OpenAI stream, and the stream assembles to
the final parse, which is what a non-streamed response returns.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

ToolChoiceMode = Literal["auto", "required", "named"]


@dataclass
class ParsedCall:
    name: str
    arguments: str  # the JSON text of the arguments object as far as it is known
    complete: bool = False


@dataclass
class ParsedOutput:
    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)


@dataclass(frozen=True)
class FunctionSpec:
    """One function tool of a request: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


class ToolParser(ABC):
    name: str
    #: the text that starts the tool calls of an output (a model writes prose before it)
    start_marker: str

    @abstractmethod
    def parse(self, text: str, final: bool) -> ParsedOutput:
        """What ``text`` (the output so far, or all of it when ``final``) holds; see the module contract."""

    @abstractmethod
    def grammar(self, functions: list[FunctionSpec], mode: ToolChoiceMode, parallel: bool) -> str:
        """A Lark grammar: "required"/"named" allow only calls of ``functions`` (one unless ``parallel``)
        whose arguments validate against their schemas; "auto" also allows prose with no call."""

    @abstractmethod
    def render_calls(self, calls: list[tuple[str, str]]) -> str:
        """``(name, arguments JSON)`` pairs written as the model writes them (the inverse of ``parse``):
        for templates with no tool support and for the default tool prompt's example."""


# ---- helpers shared by the formats ------------------------------------------------------------------

_WS = " \t\r\n"


def lark_string(text: str) -> str:
    """``text`` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def lark_regex_literal(text: str) -> str:
    """``text`` escaped for use inside a Lark ``/.../`` regex."""
    return re.escape(text).replace("/", "\\/")


def function_rules(functions: list[FunctionSpec], head: str, args_key: str, tail: str = "}") -> tuple[str, str]:
    """Rules for calls spelled ``{"name": "<name>", "<args_key>": <arguments>}``: returns the rule
    text and the name of the rule that matches any one call."""
    rules, names = [], []
    for i, fn in enumerate(functions):
        rules.append(f"fn{i}: {lark_string(head.format(name=json.dumps(fn.name), key=args_key))} args{i} "
                     f"{lark_string(tail)}")
        rules.append(f"args{i}: %json {json.dumps(_compact(fn.parameters))}")
        names.append(f"fn{i}")
    rules.append("call: " + " | ".join(names))
    return "\n".join(rules), "call"


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    # one space after ',' and ':' as models write JSON in calls, and no other whitespace (a sampler
    # left free to add whitespace wanders in it)
    options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return {**(schema or {"type": "object"}), "x-guidance": options}


def hold_back(text: str, marker: str) -> int:
    """Where the text that could still become ``marker`` (or trailing whitespace before it) starts:
    streaming sends prose only up to there."""
    end = len(text)
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            end = len(text) - k
            break
    return len(text[:end].rstrip(_WS))


def json_value_end(text: str, start: int) -> int | None:
    """The end of the JSON value starting at ``text[start]`` (leading whitespace skipped), or None when
    the text ends inside it. Only brackets and strings are tracked: the value is not validated."""
    i = start
    while i < len(text) and text[i] in _WS:
        i += 1
    if i >= len(text):
        return None
    depth, in_string, escaped = 0, False, False
    if text[i] not in "{[\"":  # a scalar: up to the next delimiter
        m = re.compile(r"[^,}\]\s]*").match(text, i)
        assert m is not None
        return m.end() if m.end() < len(text) else None
    for j in range(i, len(text)):
        c = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if depth == 0:
                    return j + 1
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(arguments|parameters)"\s*:\s*')


def parse_call_object(text: str, start: int, args_keys: tuple[str, ...]) -> tuple[ParsedCall | None, int | None]:
    """Parses ``{"name": ..., "<args key>": {...}}`` at ``text[start:]``.

    Returns the call as far as it is known (None before its name is complete) and where the object
    ends (None while it is incomplete); raises ValueError when the complete object is not a call.
    Name-first objects stream their arguments as they grow (the raw JSON text); any other key order
    is recognised only once the object is complete.
    """
    m = _NAME.match(text, start)
    if m is not None and m.group(2) in args_keys:
        name = json.loads(f'"{m.group(1)}"')
        args_start = m.end()
        args_end = json_value_end(text, args_start)
        raw = text[args_start:args_end].strip(_WS) if args_end is not None else text[args_start:].lstrip(_WS)
        if raw.startswith('"'):  # string-encoded arguments: sent decoded, once complete
            try:
                raw = json.loads(raw) if args_end is not None else ""
            except ValueError:
                raise ValueError("tool call arguments are not a JSON object") from None
        if args_end is None:
            return ParsedCall(name, raw), None
        end = json_value_end(text, start)
        return ParsedCall(name, raw, complete=end is not None), end
    end = json_value_end(text, start)
    if end is None:
        return None, None
    obj = json.loads(text[start:end])  # ValueError if malformed
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("not a tool call object")
    args: Any = next((obj[k] for k in args_keys if k in obj), {})
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ParsedCall(obj["name"], arguments, complete=True), end
