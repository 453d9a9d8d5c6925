"""The pieces a program appends to its state: text, roles, ``gen`` and ``select``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Role = str  # "system" | "user" | "assistant"
ROLES = ("system", "user", "assistant")


class Expr:
    """Something ``state += ...`` accepts; ``a + b`` concatenates (str on either side works too)."""

    def __add__(self, other: Any) -> Concat:
        return Concat([self, other])

    def __radd__(self, other: Any) -> Concat:
        return Concat([other, self])


@dataclass
class Concat(Expr):
    parts: list[Any]


@dataclass
class RoleBegin(Expr):
    role: Role


@dataclass
class RoleEnd(Expr):
    role: Role


@dataclass
class Gen(Expr):
    """Generate text into variable ``name``. Constraints (at most one): ``regex``, ``json_schema``
    (dict or JSON string) or ``choices`` (constrained sampling among strings; for the option the
    model finds most likely as a whole, use ``select``). ``None`` fields take the run's defaults."""

    name: str | None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    regex: str | None = None
    json_schema: Any = None
    choices: list[str] | None = None


@dataclass
class Select(Expr):
    """Choose one of ``choices`` by the model's length-normalised log-likelihood of each option."""

    name: str | None
    choices: list[str] = field(default_factory=list)


def gen(name: str | None = None, max_tokens: int | None = None, stop: str | list[str] | None = None, *,
        temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
        regex: str | None = None, json_schema: Any = None, choices: list[str] | None = None) -> Gen:
    if sum(x is not None for x in (regex, json_schema, choices)) > 1:
        raise ValueError("gen takes at most one of regex, json_schema, choices")
    return Gen(name, max_tokens, stop, temperature, top_p, seed, regex, json_schema,
               list(choices) if choices is not None else None)


def select(name: str | None = None, choices: list[str] | None = None) -> Select:
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("select needs a non-empty list of non-empty strings")
    return Select(name, list(choices))


def _role(role: Role, content: Any) -> Concat:
    parts = [] if content is None else [content]
    return Concat([RoleBegin(role), *parts, RoleEnd(role)])


def system(content: Any = None) -> Concat:
    return _role("system", content)


def user(content: Any = None) -> Concat:
    return _role("user", content)


def assistant(content: Any = None) -> Concat:
    return _role("assistant", content)
