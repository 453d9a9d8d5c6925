"""A chat request's messages, tools included, rendered into the prompt.

Templates that render tools themselves (they use the ``tools`` variable) get the conversation in
transformers' shape: assistant ``tool_calls`` with their arguments as objects, ``tool`` messages
with ``tool_call_id``, and ``tools=`` (``apply_chat_template(tools=...)``). Other templates get
Pagoda's default tool prompt:

- a system message (the first one, extended, or a new one) that lists the functions as JSON and
  shows how to call them, in the tool parser's own format (Hermes ``<tool_call>`` by default);
- assistant tool calls written in that format after the message's text;
- each tool result as a user message ``<tool_response>\\n{content}\\n</tool_response>``.
"""

from __future__ import annotations

import json
from typing import Any

from pagoda.server.tool_parsers import ToolParser

DEFAULT_TOOL_PROMPT = (
    "You can call functions to help answer. The functions, with the JSON schemas of their arguments:\n"
    "{functions}\n"
    "To call a function, answer with nothing but the call, written exactly like this example:\n"
    "{example}\n"
    "The results come back in <tool_response></tool_response> tags."
)


def template_renders_tools(chat_template: str | None) -> bool:
    return chat_template is not None and "tools" in chat_template


def conversation(messages: list[Any], native_tools: bool, parser: ToolParser) -> list[dict[str, Any]]:
    """The messages (protocol ChatMessage records) as template dicts."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name:
            d["name"] = m.name
        reasoning = getattr(m, "reasoning_content", None) or getattr(m, "reasoning", None)
        if reasoning:
            d["reasoning_content"] = reasoning
        calls = [(c.function.name, c.function.arguments, c.id) for c in (m.tool_calls or [])]
        if native_tools:
            if calls:
                d["tool_calls"] = [{"id": cid, "type": "function",
                                    "function": {"name": name, "arguments": _arguments_object(args)}}
                                   for name, args, cid in calls]
            if m.role == "tool" and m.tool_call_id is not None:
                d["tool_call_id"] = m.tool_call_id
        else:
            if calls:
                text = parser.render_calls([(name, args) for name, args, _ in calls])
                d["content"] = f"{d['content']}\n{text}" if d["content"] else text
            if m.role == "tool":
                d = {"role": "user", "content": f"<tool_response>\n{d['content']}\n</tool_response>"}
        out.append(d)
    return out


def default_tool_prompt(tools: list[dict[str, Any]], parser: ToolParser) -> str:
    functions = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    first = tools[0]["function"]
    example_args = json.dumps({k: f"<{k}>" for k in (first.get("parameters") or {}).get("properties", {})})
    return DEFAULT_TOOL_PROMPT.format(functions=functions, example=parser.render_calls([(first["name"],
                                                                                         example_args)]))


def with_default_tool_prompt(conv: list[dict[str, Any]], tools: list[dict[str, Any]],
                             parser: ToolParser) -> list[dict[str, Any]]:
    prompt = default_tool_prompt(tools, parser)
    if conv and conv[0]["role"] in ("system", "developer"):
        return [{**conv[0], "content": f"{conv[0]['content']}\n\n{prompt}"}, *conv[1:]]
    return [{"role": "system", "content": prompt}, *conv]


def _arguments_object(arguments: str) -> Any:
    # templates write `tool_call.arguments | tojson`: give them the object (vLLM does the same)
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
