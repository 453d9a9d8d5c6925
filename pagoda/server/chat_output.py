"""One chat choice's output as the API shows it: reasoning, content and tool calls.

The engine streams text; ``ChatOutput`` re-parses the text so far at each increment (reasoning
parser first, then the tool parser on the answer) and returns what is new as an OpenAI delta. The
parsers' contract (everything only grows over prefixes) makes the stream assemble to exactly the
final parse, which is what the non-streamed response returns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from pagoda.server.reasoning_parser import ReasoningParser
from pagoda.server.tool_parsers import ParsedOutput, ToolParser


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class CallDelta:
    index: int
    id: str | None  # set on the first delta of a call, with its name
    name: str | None
    arguments: str


@dataclass
class OutputDelta:
    reasoning: str = ""
    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.calls)


@dataclass
class FinalCall:
    id: str
    name: str
    arguments: str


class ChatOutput:
    """The parse of one choice's growing text; with no parsers the text is the content, as is."""

    def __init__(self, tool_parser: ToolParser | None = None, reasoning_parser: ReasoningParser | None = None,
                 starts_in_reasoning: bool = False) -> None:
        self.tool_parser = tool_parser
        self.reasoning_parser = reasoning_parser
        self.starts_in_reasoning = starts_in_reasoning
        self.text = ""
        self.reasoning: str | None = None
        self.content = ""
        self.calls: list[FinalCall] = []

    @property
    def parses(self) -> bool:
        return self.tool_parser is not None or self.reasoning_parser is not None

    def feed(self, text: str, final: bool = False) -> OutputDelta:
        """Adds ``text`` (the next increment; ``final`` on the last) and returns what became known."""
        self.text += text
        if not self.parses:
            self.content += text
            return OutputDelta(content=text)
        reasoning, answer = None, self.text
        if self.reasoning_parser is not None:
            r = self.reasoning_parser.parse(self.text, final, self.starts_in_reasoning)
            reasoning, answer = r.reasoning, r.content
        parsed = self.tool_parser.parse(answer, final) if self.tool_parser is not None else ParsedOutput(answer)
        delta = OutputDelta()
        if reasoning is not None:
            delta.reasoning = _grown(self.reasoning or "", reasoning)
            self.reasoning = (self.reasoning or "") + delta.reasoning
        delta.content = _grown(self.content, parsed.content)
        self.content += delta.content
        for i, call in enumerate(parsed.calls):
            if i == len(self.calls):
                self.calls.append(FinalCall(tool_call_id(), call.name, ""))
                delta.calls.append(CallDelta(i, self.calls[i].id, call.name, ""))
            grown = _grown(self.calls[i].arguments, call.arguments)
            if grown:
                self.calls[i].arguments += grown
                if delta.calls and delta.calls[-1].index == i:
                    delta.calls[-1].arguments += grown
                else:
                    delta.calls.append(CallDelta(i, None, None, grown))
        return delta

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """OpenAI's: "tool_calls" when the model stopped after calling."""
        return "tool_calls" if engine_reason == "stop" and self.calls else engine_reason

    def message_content(self) -> str | None:
        """None when the answer is only tool calls (OpenAI's ``content: null``)."""
        return None if self.calls and not self.content else self.content


def _grown(sent: str, now: str) -> str:
    # the parsers only append; anything else would be a bug in a parser, and is never re-sent
    return now[len(sent):] if now.startswith(sent) else ""
