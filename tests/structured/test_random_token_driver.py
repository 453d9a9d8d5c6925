"""Drive matchers with random allowed tokens: no masked-in token may ever break the constraint, and
every walk that ends (eos allowed and chosen) yields text the constraint accepts."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import numpy as np
import pytest
import torch

from pagoda.structured import GuidedDecodingParams, compiler_for
from pagoda.structured.token_bitmask import allowed_token_ids, apply_token_bitmask_, bitmask_words

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "ratio": {"type": "number", "minimum": -1, "maximum": 1},
        "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
        "nested": {"$ref": "#/$defs/point"},
    },
    "required": ["name", "age", "tags", "code"],
    "additionalProperties": False,
    "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "boolean"}},
                        "required": ["x", "y"], "additionalProperties": False}},
}
ARITH = 'start: expr\nexpr: term (("+" | "-") term)*\nterm: NUMBER | "(" expr ")"\nNUMBER: /[1-9][0-9]?/'


def _check_regex(pattern):
    return lambda text: re.fullmatch(pattern, text, re.ASCII) is not None  # \d means [0-9]


def _check_schema(schema):
    def check(text):
        jsonschema.validate(json.loads(text), schema)
        return True
    return check


def _check_arith(text):
    eval(compile(text, "<arith>", "eval"), {"__builtins__": {}})  # parses as an expression
    return re.fullmatch(r"[0-9+\-()]+", text) is not None


CASES = [
    (GuidedDecodingParams(regex=r"\(\d{3}\) \d{3}-\d{4}"), _check_regex(r"\(\d{3}\) \d{3}-\d{4}")),
    (GuidedDecodingParams(regex=r"[a-z]{1,6}@[a-z]{1,6}\.(com|org)"),
     _check_regex(r"[a-z]{1,6}@[a-z]{1,6}\.(com|org)")),
    (GuidedDecodingParams(json=PERSON), _check_schema(PERSON)),
    (GuidedDecodingParams(json={"type": "array", "items": {"type": "integer"}, "maxItems": 4}),
     _check_schema({"type": "array", "items": {"type": "integer"}, "maxItems": 4})),
    (GuidedDecodingParams(choice=["red", "green", "blue", "red wine"]),
     lambda text: text in ("red", "green", "blue", "red wine")),
    (GuidedDecodingParams(grammar=ARITH), _check_arith),
]


@pytest.mark.parametrize("spec, check", CASES, ids=[c[0].kind + str(i) for i, c in enumerate(CASES)])
def test_random_walks_never_leave_the_grammar(default_tokenizer, spec, check):
    tokenizer = default_tokenizer
    eos = tokenizer.eos_token_id
    compiled = compiler_for(tokenizer).compile(spec)
    rng = random.Random(0)
    bitmask = np.zeros(bitmask_words(tokenizer.vocab_size), dtype=np.int32)
    short = np.array([len(tokenizer.decode([t])) <= 2 for t in range(tokenizer.vocab_size)])
    short[eos] = False
    finished = 0
    for _walk in range(12):
        matcher, probe = compiled.new_matcher(), compiled.new_matcher()
        tokens: list[int] = []
        for _step in range(120):
            matcher.fill_bitmask(bitmask)
            allowed_ids = allowed_token_ids(bitmask, tokenizer.vocab_size)
            allowed = allowed_ids.tolist()
            assert allowed, "a live matcher must allow some token"
            # the mask applied to a logits row keeps exactly the allowed ids
            row = apply_token_bitmask_(torch.zeros(tokenizer.vocab_size + 64), bitmask)
            assert np.array_equal(np.flatnonzero(np.isfinite(row.numpy())), allowed_ids)
            assert (eos in allowed) == matcher.is_accepting()
            # the backend's shortcut (no forced bytes: no forced tokens) agrees with llguidance
            forced = matcher.forced_tokens()
            assert forced == matcher._m.compute_ff_tokens()
            # where nothing is forced or ended, one token's check (which verifies draws) agrees with the mask
            if not forced and not matcher.is_terminated():
                probes = rng.sample(allowed, min(8, len(allowed))) + [rng.randrange(tokenizer.vocab_size + 64)
                                                                       for _ in range(8)] + [eos]
                assert [matcher.allows(t) for t in probes] == [t in set(allowed) for t in probes]
            # every masked-in token (a random sample of them) is accepted by the grammar
            for t in rng.sample(allowed, min(16, len(allowed))):
                if t != eos:
                    assert probe.accept_tokens([t]), (tokenizer.decode(tokens + [t]), probe.error)
                    probe.rollback(1)
            if eos in allowed and (len(allowed) == 1 or rng.random() < 0.5):
                finished += 1
                assert check(tokenizer.decode(tokens)), tokenizer.decode(tokens)
                break
            # prefer short tokens so walks through free text end within the step budget
            candidates = allowed_ids[short[allowed_ids]].tolist() or [t for t in allowed if t != eos]
            t = rng.choice(candidates)
            assert matcher.accept_tokens([t]) and probe.accept_tokens([t])
            tokens.append(t)
    assert finished >= 6, f"only {finished} of 12 walks ended"
