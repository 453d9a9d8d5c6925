"""Llama 3.1+ JSON calls: the whole answer is ``{"name": "f", "parameters": {...}}`` (optionally after
``<|python_tag|>``), several calls separated by ``; ``."""

from __future__ import annotations

import json
import logging
import re

from pagoda.server.tool_parsers.tool_parser import (
    FunctionSpec,
    ParsedOutput,
    ToolChoiceMode,
    ToolParser,
    function_rules,
    parse_call_object,
)

logger = logging.getLogger(__name__)

_SEPARATOR = re.compile(r"\s*;\s*")


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    start_marker = "<|python_tag|>"
    _args_keys = ("parameters", "arguments")

    def parse(self, text: str, final: bool) -> ParsedOutput:
        stripped = text.lstrip()
        start = len(text) - len(stripped)
        if stripped.startswith(self.start_marker):
            start += len(self.start_marker)
        elif not stripped.startswith("{"):
            maybe_call = any(m.startswith(stripped) for m in (self.start_marker, '{"name"'))
            return ParsedOutput(content="" if maybe_call and not final else text)
        out = ParsedOutput()
        pos = start
        while True:
            try:
                call, end = parse_call_object(text, pos, self._args_keys)
            except ValueError:
                call, end = None, None
                if final and not out.calls:  # JSON that is not a call: it was the answer
                    return ParsedOutput(content=text)
            if call is None:
                if final and not out.calls:
                    return ParsedOutput(content=text)
                break
            out.calls.append(call)
            if end is None:
                break
            sep = _SEPARATOR.match(text, end)
            if sep is None or sep.end() == end or sep.end() >= len(text):
                break
            pos = sep.end()
        return out

    def render_calls(self, calls: list[tuple[str, str]]) -> str:
        return "; ".join(f'{{"name": {json.dumps(name)}, "parameters": {args}}}' for name, args in calls)

    def grammar(self, functions: list[FunctionSpec], mode: ToolChoiceMode, parallel: bool) -> str:
        rules, call = function_rules(functions, '{{"name": {name}, "{key}": ', "parameters")
        body = f'body: {call}' + (f' ("; " {call})*' if parallel else "")
        top = "start: body | TEXT?\nTEXT: /[^{](?s:.*)/" if mode == "auto" else "start: body"
        return f"{top}\n{body}\n{rules}\n"
