"""The ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` fields of a chat request, validated, and
the grammar that enforces them.

"required" and a named function constrain the output to calls whose arguments validate against
their schemas; "auto" to prose or such calls (unless the request gives its own structured-output
constraint, which then applies alone); "none" leaves the output free and returns it as content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pagoda.errors import InvalidRequestError
from pagoda.server.tool_parsers import FunctionSpec, ToolParser
from pagoda.server.tool_parsers.tool_parser import ToolChoiceMode
from pagoda.structured.guided_decoding_params import GuidedDecodingParams

ToolMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[dict[str, Any], ...]  # as the request gave them (OpenAI's shape), for the chat template
    functions: tuple[FunctionSpec, ...]
    mode: ToolMode
    named: str | None = None
    parallel: bool = True

    @property
    def parses_calls(self) -> bool:
        return self.mode != "none"

    def grammar(self, parser: ToolParser) -> GuidedDecodingParams | None:
        """The constraint for this request's mode, or None ("none")."""
        if self.mode == "none":
            return None
        functions = [f for f in self.functions if self.named is None or f.name == self.named]
        mode: ToolChoiceMode = "auto" if self.mode == "auto" else ("named" if self.mode == "named" else "required")
        return GuidedDecodingParams(grammar=parser.grammar(functions, mode, self.parallel))


def tool_request_from(tools: Any, tool_choice: Any, parallel_tool_calls: Any) -> ToolRequest | None:
    """Validates the three fields (InvalidRequestError naming the field); None when no tools are given."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequestError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if not tools:
        if tool_choice not in (None, "none"):
            raise InvalidRequestError("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise InvalidRequestError("tools must be a list", "tools")
    functions: list[FunctionSpec] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise InvalidRequestError(f"tools[{i}]: only tools of type 'function' are supported, got {kind!r}",
                                      "tools")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(f"tools[{i}].function needs a name", "tools")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InvalidRequestError(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
        if any(f.name == fn["name"] for f in functions):
            raise InvalidRequestError(f"tools[{i}]: the function name {fn['name']!r} is used twice", "tools")
        functions.append(FunctionSpec(fn["name"], params))
    named = None
    if tool_choice is None:
        mode: ToolMode = "auto"
    elif isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise InvalidRequestError(f"tool_choice must be 'none', 'auto', 'required' or a function, "
                                      f"got {tool_choice!r}", "tool_choice")
        mode = tool_choice  # type: ignore[assignment]
    elif isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        named = fn.get("name") if isinstance(fn, dict) else None
        if not any(f.name == named for f in functions):
            raise InvalidRequestError(f"tool_choice names function {named!r}, which is not in tools", "tool_choice")
        mode = "named"
    else:
        raise InvalidRequestError("tool_choice must be a string or {'type': 'function', 'function': {'name': ...}}",
                                  "tool_choice")
    return ToolRequest(tools=tuple(json.loads(json.dumps(tools))), functions=tuple(functions), mode=mode,
                       named=named, parallel=parallel_tool_calls is not False)
