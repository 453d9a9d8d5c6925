"""Chat templates rendered as transformers renders them: a sandboxed Jinja environment with the
same filters and globals (``tojson`` without HTML escaping, ``raise_exception``, ``strftime_now``)."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


def render_chat_template(template: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    """The conversation as text; ``variables`` (special tokens, ``add_generation_prompt``, tools, ...)
    are visible to the template."""
    return _compile_template(template).render(messages=[_alias_reasoning(m) for m in messages], **variables)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile_template(template: str) -> jinja2.Template:
    # Templates come from model files: untrusted code, hence the sandbox.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env.from_string(template)


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    # As transformers: reasoning under any of its names is visible as `reasoning_content` and `thinking`.
    names = ("reasoning_content", "thinking", "reasoning")
    reasoning = next((message[k] for k in names if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}
