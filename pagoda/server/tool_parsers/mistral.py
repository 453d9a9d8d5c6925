"""Mistral calls: prose, then ``[TOOL_CALLS]`` and a JSON array of ``{"name": "f", "arguments": {...}}``."""

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
    hold_back,
    lark_regex_literal,
    lark_string,
    parse_call_object,
)

logger = logging.getLogger(__name__)

_OPEN = re.compile(r"\s*\[")
_NEXT = re.compile(r"\s*,")


class MistralToolParser(ToolParser):
    name = "mistral"
    start_marker = "[TOOL_CALLS]"

    def parse(self, text: str, final: bool) -> ParsedOutput:
        first = text.find(self.start_marker)
        if first < 0:
            return ParsedOutput(content=text if final else text[:hold_back(text, self.start_marker)])
        out = ParsedOutput(content=text[:first].rstrip())
        m = _OPEN.match(text, first + len(self.start_marker))
        pos = m.end() if m else -1
        while pos >= 0:
            try:
                call, end = parse_call_object(text, pos, ("arguments",))
            except ValueError as e:
                logger.info("ignoring a malformed tool call: %s", e)
                break
            if call is None:
                break
            out.calls.append(call)
            if end is None:
                break
            sep = _NEXT.match(text, end)
            pos = sep.end() if sep else -1
        return out

    def render_calls(self, calls: list[tuple[str, str]]) -> str:
        items = ", ".join(f'{{"name": {json.dumps(name)}, "arguments": {args}}}' for name, args in calls)
        return f"{self.start_marker}[{items}]"

    def grammar(self, functions: list[FunctionSpec], mode: ToolChoiceMode, parallel: bool) -> str:
        rules, call = function_rules(functions, '{{"name": {name}, "{key}": ', "arguments")
        body = f'body: "[" {call}' + (f' (", " {call})*' if parallel else "") + ' "]"'
        if mode == "auto":
            marker = lark_regex_literal(self.start_marker)
            top = (f"start: TEXT | lead body\n"
                   f"TEXT: /(?s:.*)/ & ~/(?s:.*){marker}(?s:.*)/\n"
                   f"lead[lazy]: /(?s:.*){marker}/")
        else:
            top = f"start: {lark_string(self.start_marker)} body"
        return f"{top}\n{body}\n{rules}\n"
