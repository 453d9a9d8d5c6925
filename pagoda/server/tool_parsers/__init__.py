"""Tool-call parsers by name, and the choice of one for a chat template.

Each parser knows one output format; ``--tool-call-parser NAME`` picks it, else the chat template
decides (the markers it writes name its format), else Hermes, the format of Pagoda's default tool
prompt (``pagoda.server.chat_rendering``).
"""

from __future__ import annotations

from collections.abc import Callable

from pagoda.server.tool_parsers.tool_parser import FunctionSpec, ParsedCall, ParsedOutput, ToolParser


def _hermes() -> ToolParser:
    from pagoda.server.tool_parsers.hermes import HermesToolParser

    return HermesToolParser()


def _llama3_json() -> ToolParser:
    from pagoda.server.tool_parsers.llama3_json import Llama3JsonToolParser

    return Llama3JsonToolParser()


def _mistral() -> ToolParser:
    from pagoda.server.tool_parsers.mistral import MistralToolParser

    return MistralToolParser()


TOOL_PARSERS: dict[str, Callable[[], ToolParser]] = {"hermes": _hermes, "llama3_json": _llama3_json,
                                                     "mistral": _mistral}

# markers a template writes when it renders tool calls in a format, checked in this order
_TEMPLATE_MARKERS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3_json"))


def tool_parser_for(name: str | None, chat_template: str | None) -> ToolParser:
    """The parser called ``name``, or the one the template's markers point to (Hermes by default)."""
    if name is None:
        name = next((n for marker, n in _TEMPLATE_MARKERS if chat_template and marker in chat_template), "hermes")
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool call parser {name!r}; available: {sorted(TOOL_PARSERS)}") from None


__all__ = ["TOOL_PARSERS", "FunctionSpec", "ParsedCall", "ParsedOutput", "ToolParser", "tool_parser_for"]
