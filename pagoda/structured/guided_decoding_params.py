"""What a constrained request asks for: one of a JSON schema, any JSON object, a regex, a choice or a grammar."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pagoda.errors import InvalidRequestError

GuidedKind = Literal["json", "json_object", "regex", "choice", "grammar"]
Whitespace = Literal["compact", "flexible"]


@dataclass(frozen=True)
class GuidedDecodingParams:
    """A frozen, hashable constraint spec (the compile cache's key). Exactly one of the five is set.

    ``json`` is a JSON schema, given as a dict or a JSON string and kept as a JSON string (key order
    kept: it is the order the properties are generated in). ``grammar`` is Lark or GBNF/EBNF.
    ``whitespace="compact"`` (the default) allows no optional whitespace in JSON, so a sampler cannot
    wander in spaces and newlines; "flexible" allows JSON whitespace between tokens.
    """

    json: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    whitespace: Whitespace = "compact"
    backend: str = "llguidance"
    # (start tag, end tag, output starts inside): the constraint applies after a reasoning block
    # ``<start>...<end>`` that the output may open (or, when it starts inside, must close) first
    reasoning: tuple[str, str, bool] | None = None

    def __post_init__(self) -> None:
        if self.json is not None and not isinstance(self.json, str):
            try:
                text = json.dumps(self.json, ensure_ascii=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise InvalidRequestError(f"the JSON schema is not JSON-serialisable: {exc}", "guided_json") from None
            object.__setattr__(self, "json", text)
        if self.json is not None:
            try:
                schema = json.loads(self.json)
            except ValueError as exc:
                raise InvalidRequestError(f"the JSON schema is not valid JSON: {exc}", "guided_json") from None
            if not isinstance(schema, (dict, bool)):
                raise InvalidRequestError("a JSON schema must be an object (or a boolean)", "guided_json")
        if self.choice is not None:
            if isinstance(self.choice, str) or not all(isinstance(c, str) for c in self.choice):
                raise InvalidRequestError("guided_choice must be a list of strings", "guided_choice")
            object.__setattr__(self, "choice", tuple(self.choice))
            if not self.choice:
                raise InvalidRequestError("guided_choice must not be empty", "guided_choice")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidRequestError(f"guided_{name} must be a non-empty string", f"guided_{name}")
        set_ = [k for k in ("json", "regex", "choice", "grammar") if getattr(self, k) is not None]
        if self.json_object:
            set_.append("json_object")
        if len(set_) != 1:
            raise InvalidRequestError(
                "exactly one of json, json_object, regex, choice, grammar must be given, got "
                + (", ".join(set_) or "none"), "guided_decoding")
        if self.whitespace not in ("compact", "flexible"):
            raise InvalidRequestError(f"whitespace must be 'compact' or 'flexible', got {self.whitespace!r}",
                                      "guided_decoding")

    @property
    def kind(self) -> GuidedKind:
        if self.json is not None:
            return "json"
        if self.json_object:
            return "json_object"
        if self.regex is not None:
            return "regex"
        if self.choice is not None:
            return "choice"
        return "grammar"

    @property
    def schema(self) -> Any:
        """The JSON schema as an object: the given one, or ``{"type": "object"}`` for json_object."""
        if self.json_object:
            return {"type": "object"}
        return None if self.json is None else json.loads(self.json)

    @property
    def num_chars(self) -> int:
        """The size of the spec's text (schema, regex, grammar, choices): what the limits measure."""
        return sum(len(x) for x in (self.json or "", self.regex or "", self.grammar or "", *(self.choice or ())))

    @property
    def param(self) -> str:
        """The request field this spec came from, for error messages (the server's extension names)."""
        return {"json": "guided_json", "json_object": "response_format", "regex": "guided_regex",
                "choice": "guided_choice", "grammar": "guided_grammar"}[self.kind]
