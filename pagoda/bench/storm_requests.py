"""Requests for the storm: bodies generated from the server's own schemas, and adversarial specs.

Generated requests: the routes come from the server's ``/openapi.json`` (every POST path it lists);
the handlers read raw bodies, so the document carries no body schemas and the bodies are generated
from the JSON schemas of Pagoda's request models (``pagoda.server.protocol``), by a small generator
of our own (schemathesis was not used: its body strategies need the schemas the document lacks).
Each body is a random instance, then, half the time, mutated (a field dropped, retyped, pushed to
an extreme, or an unknown one added). Lengths are kept short so generation time stays bounded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from pagoda.server import protocol

_BODY_MODELS: dict[str, type[BaseModel]] = {
    "/v1/completions": protocol.CompletionRequest,
    "/v1/chat/completions": protocol.ChatCompletionRequest,
    "/tokenize": protocol.TokenizeRequest,
    "/detokenize": protocol.DetokenizeRequest,
}
_LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_GENERATING = ("/v1/completions", "/v1/chat/completions")  # routes whose max_tokens bounds the work
_EXTREMES: list[Any] = [0, -1, 2**31, 2**63, -(2**63), 1e308, -1e308, "", "x" * 300, [], {}, None, True, "\u0000"]
_WORDS = ["hello", "the", "storm", "{", "}", "é", "中文", "\n", "<|im_end|>", "🙂", "0", "a b c"]


class SchemaRequestGenerator:
    """Random (often invalid) bodies for every POST route of a server's OpenAPI document."""

    def __init__(self, openapi: dict[str, Any], model: str, rng: random.Random) -> None:
        self.rng = rng
        self.model = model
        posts = [p for p, ops in openapi.get("paths", {}).items() if "post" in ops]
        self.routes = [p for p in posts if p in _BODY_MODELS] + [p for p in posts if p not in _BODY_MODELS
                                                                  and not p.startswith("/v1/images")]
        self.schemas = {p: m.model_json_schema() for p, m in _BODY_MODELS.items()}

    def next(self) -> tuple[str, Any]:
        path = self.rng.choice(self.routes)
        schema = self.schemas.get(path)
        body: Any = self._instance(schema, schema.get("$defs", {}), 0) if schema else {}
        if isinstance(body, dict):
            body["model"] = self.model if self.rng.random() < 0.9 else body.get("model")
            if "messages" in (schema or {}).get("properties", {}) and self.rng.random() < 0.7:
                body["messages"] = [{"role": "user", "content": self._string()}]
            if "prompt" in (schema or {}).get("properties", {}) and self.rng.random() < 0.7:
                body["prompt"] = self._string()
            for name in _LENGTH_FIELDS:
                body.pop(name, None)
            if path.startswith("/v1/"):  # bounded work: a few tokens, sometimes an invalid length
                body["max_tokens"] = self.rng.choice([1, 2, 4, 8]) if self.rng.random() < 0.9 else \
                    self.rng.choice(_EXTREMES)
                if isinstance(body.get("n"), int) and not isinstance(body.get("n"), bool) and body["n"] > 2:
                    body["n"] = self.rng.choice([1, 2, 129, 10**6])
            if self.rng.random() < 0.5:
                self._mutate(body)
            if path in _GENERATING and body.get("max_tokens") is None:
                # dropped or nulled by the mutation: the server would generate up to the context (thousands
                # of tokens, minutes under the storm); the storm's generated work stays bounded
                body["max_tokens"] = self.rng.choice([1, 2, 4, 8])
        return path, body

    def _instance(self, schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
        if "$ref" in schema:
            return self._instance(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._instance(self.rng.choice(schema[key]), defs, depth + 1)
        kind = schema.get("type")
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            chosen = [k for k in props if k in schema.get("required", ()) or self.rng.random() < 0.3]
            return {k: self._instance(props[k], defs, depth + 1) for k in chosen} if depth < 6 else {}
        if kind == "array":
            item = schema.get("items", {})
            return [self._instance(item, defs, depth + 1) for _ in range(self.rng.randrange(0, 3 if depth < 6 else 1))]
        if kind == "integer":
            return self.rng.choice([0, 1, 2, 5, -1, self.rng.randrange(-1000, 1000)])
        if kind == "number":
            return self.rng.choice([0.0, 0.5, 1.0, 2.0, -0.5, self.rng.uniform(-3, 3)])
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "string":
            return self._string()
        if kind == "null":
            return None
        return self.rng.choice([None, 1, "x", [], {}])

    def _string(self) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randrange(1, 6)))

    def _mutate(self, body: dict[str, Any]) -> None:
        how = self.rng.randrange(4)
        keys = [k for k in body if k != "model"]
        if how == 0 and keys:
            body.pop(self.rng.choice(keys))
        elif how == 1 and keys:
            body[self.rng.choice(keys)] = self.rng.choice(_EXTREMES)
        elif how == 2:
            body[f"unknown_{self.rng.randrange(100)}"] = self.rng.choice(_EXTREMES)
        else:
            body["stream"] = not body.get("stream", False)


def adversarial_specs(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Structured-output fields meant to be costly: deep nesting, huge enums and choices, catastrophic
    and huge regexes, grammars with thousands of alternatives, over-long specs. ``count`` of them,
    cycling through the kinds."""
    def nested(depth: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        for i in range(depth):
            schema = {"type": "object", "properties": {f"k{i}": schema}, "required": [f"k{i}"]}
        return schema

    makers: list[Callable[[int], dict[str, Any]]] = [
        lambda i: {"guided_json": nested(rng.choice([10, 40, 70, 150]))},
        lambda i: {"guided_json": {"enum": [f"v{i}_{j}" for j in range(rng.choice([500, 3000, 20000]))]}},
        lambda i: {"guided_regex": rng.choice(["(a+)+$", "(a|aa)*b", "(x+x+)+y", "([a-z]+)*@", "(.*a){20}"])},
        lambda i: {"guided_regex": f"[a-z]{{{rng.choice([10**4, 10**5, 10**6])}}}"},
        lambda i: {"guided_regex": "(" + "|".join(f"w{j}" for j in range(rng.choice([1000, 5000]))) + ")"},
        lambda i: {"guided_grammar": "start: " + " | ".join(f'"g{i}_{j}"' for j in range(rng.choice([3000, 8000])))},
        lambda i: {"guided_choice": [f"c{i}_{j}" for j in range(rng.choice([3000, 30000]))]},
        lambda i: {"guided_json": {"type": "array", "items": {"type": "string", "pattern": "(a|b)*c{1,1000}"},
                                   "minItems": 100, "maxItems": 1000}},
        lambda i: {"guided_json": {"anyOf": [{"type": "object", "properties": {f"p{j}": {"type": "string"}},
                                              "required": [f"p{j}"]} for j in range(rng.choice([100, 2000]))]}},
        lambda i: {"guided_grammar": _chain(rng.choice([200, 3000]))},
    ]
    return [makers[i % len(makers)](i) for i in range(count)]


def _chain(n: int) -> str:
    """A right-recursive chain of ``n`` rules (Earley items pile up along it)."""
    return "start: r0\n" + "\n".join(f'r{j}: "x" r{j + 1} | "y"' for j in range(n)) + f'\nr{n}: "z"'


def body_bytes(body: Any) -> bytes:
    return json.dumps(body).encode()
