"""The storm's generated requests keep their work bounded: every completion or chat body it sends names a
max_tokens (a few tokens, or an invalid value the server refuses), never none, which would let the server
generate up to the context (the full storm's 4 requests with no answer within 120 s)."""

from __future__ import annotations

import random
from collections import Counter

from pagoda.bench.storm_requests import SchemaRequestGenerator

ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/tokenize", "/detokenize"]


def test_generated_completions_always_bound_their_length():
    gen = SchemaRequestGenerator({"paths": {p: {"post": {}} for p in ROUTES}}, "m", random.Random(0))
    seen: Counter[str] = Counter()
    for _ in range(5000):
        path, body = gen.next()
        seen[path] += 1
        if path in ("/v1/completions", "/v1/chat/completions") and isinstance(body, dict):
            assert body.get("max_tokens") is not None, body
            value = body["max_tokens"]
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                assert value <= 8 or value >= 2**31, body  # a few tokens, or past any context (a 400)
    assert seen["/v1/completions"] > 500 and seen["/v1/chat/completions"] > 500
