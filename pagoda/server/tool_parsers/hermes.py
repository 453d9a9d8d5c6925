"""Hermes-style calls (Qwen 2.5/3, Hermes, many fine-tunes): prose, then one block per call,
``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``."""

from __future__ import annotations

import json
import logging

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


class HermesToolParser(ToolParser):
    name = "hermes"
    start_marker = "<tool_call>"
    end_marker = "</tool_call>"

    def parse(self, text: str, final: bool) -> ParsedOutput:
        first = text.find(self.start_marker)
        if first < 0:
            return ParsedOutput(content=text if final else text[:hold_back(text, self.start_marker)])
        out = ParsedOutput(content=text[:first].rstrip())
        pos = first
        while pos >= 0:
            try:
                call, end = parse_call_object(text, pos + len(self.start_marker), ("arguments",))
            except ValueError as e:
                logger.info("ignoring a malformed tool call block: %s", e)
                break
            if call is None:
                break
            out.calls.append(call)
            if end is None:
                break
            pos = text.find(self.start_marker, end)
        return out

    def render_calls(self, calls: list[tuple[str, str]]) -> str:
        return "\n".join(f'{self.start_marker}\n{{"name": {json.dumps(name)}, "arguments": {args}}}\n'
                         f'{self.end_marker}' for name, args in calls)

    def grammar(self, functions: list[FunctionSpec], mode: ToolChoiceMode, parallel: bool) -> str:
        rules, call = function_rules(functions, '{{"name": {name}, "{key}": ', "arguments")
        block = f'{call} {lark_string(chr(10) + self.end_marker)}'
        more = f' ({lark_string(chr(10) + self.start_marker + chr(10))} {block})*' if parallel else ""
        body = f"body: {block}{more}"
        open_ = lark_string(self.start_marker + "\n")
        if mode == "auto":
            marker = lark_regex_literal(self.start_marker)
            top = (f"start: TEXT | lead {lark_string(chr(10))} body\n"
                   f"TEXT: /(?s:.*)/ & ~/(?s:.*){marker}(?s:.*)/\n"
                   f"lead[lazy]: /(?s:.*){marker}/")
        else:
            top = f"start: {open_} body"
        return f"{top}\n{body}\n{rules}\n"
