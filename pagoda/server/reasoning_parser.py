"""Separates a reasoning model's thinking from its answer: ``<think>...</think>`` (DeepSeek-R1, Qwen3, ...).

``--reasoning-parser think`` turns it on. The answer's text goes on to the tool parser and the
structured-output grammar; the reasoning comes back as ``message.reasoning_content`` (and the same
text as ``message.reasoning``: clients read either name), streamed as deltas. Some templates open the
thinking block in the prompt (the generation prompt ends with ``<think>``): then the output starts
inside it.

``parse`` follows the tool parsers' contract: over growing prefixes, reasoning and content only grow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pagoda.server.tool_parsers.tool_parser import hold_back


@dataclass
class ReasoningOutput:
    reasoning: str | None  # None when the output has no reasoning part
    content: str


class ReasoningParser:
    """Splits ``<start>reasoning<end>answer``; the tags are the only format-specific part."""

    def __init__(self, name: str, start_tag: str, end_tag: str) -> None:
        self.name = name
        self.start_tag = start_tag
        self.end_tag = end_tag

    def starts_inside(self, prompt_text: str) -> bool:
        """True when the prompt opened a reasoning block the output continues."""
        tail = prompt_text.rstrip()
        return tail.endswith(self.start_tag)

    def parse(self, text: str, final: bool, starts_inside: bool = False) -> ReasoningOutput:
        lead = text.lstrip()
        if lead.startswith(self.start_tag):
            body = lead[len(self.start_tag):]
        elif starts_inside:
            body = text
        elif not final and self.start_tag.startswith(lead):  # may still become the start tag
            return ReasoningOutput(None, "")
        else:
            return ReasoningOutput(None, text)
        end = body.find(self.end_tag)
        if end < 0:
            return ReasoningOutput(body if final else body[:hold_back(body, self.end_tag)], "")
        return ReasoningOutput(body[:end], body[end + len(self.end_tag):].lstrip())


REASONING_PARSERS: dict[str, Callable[[], ReasoningParser]] = {
    "think": lambda: ReasoningParser("think", "<think>", "</think>"),
    "deepseek_r1": lambda: ReasoningParser("deepseek_r1", "<think>", "</think>"),
    "qwen3": lambda: ReasoningParser("qwen3", "<think>", "</think>"),
}


def reasoning_parser_for(name: str) -> ReasoningParser:
    try:
        return REASONING_PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown reasoning parser {name!r}; available: {sorted(REASONING_PARSERS)}") from None
