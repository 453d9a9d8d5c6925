"""Budget-aware structured output: a constrained request that nears max_tokens is steered to a short
complete match; one that ends before steering is needed is token for token unchanged."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from pagoda.structured import guided_sampling_params

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}},
                                      "note": {"type": "string"}}, "required": ["items", "note"]},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}},
                                            "required": ["b"]}}, "required": ["a"]},
]
REGEXES = [r"[A-Z][a-z]+ [0-9]{2}", r"[a-z]+(, [a-z]+)*\.", r"\(([0-9]+ )+\)"]
PROMPTS = ["Hello world", "The quick brown fox", "1, 2, 3", "Once upon a time"]


# the tiny model's tokenizer spells JSON keys in single characters: its shortest valid outputs are ~20 tokens
@pytest.mark.parametrize("max_tokens", [24, 40])
def test_tight_budgets_end_valid(tiny_llm, max_tokens):
    for spec in [dict(json=s) for s in SCHEMAS] + [dict(regex=r) for r in REGEXES]:
        params = [guided_sampling_params(tiny_llm, **spec, max_tokens=max_tokens, temperature=1.0, seed=s)
                  for s in range(len(PROMPTS))]
        unsteered = [guided_sampling_params(tiny_llm, **spec, max_tokens=max_tokens, temperature=1.0, seed=s,
                                            budget_steering=False) for s in range(len(PROMPTS))]
        outs = tiny_llm.generate(PROMPTS, params, use_tqdm=False)
        before = tiny_llm.generate(PROMPTS, unsteered, use_tqdm=False)
        for o in outs:
            out = o.outputs[0]
            assert len(out.token_ids) <= max_tokens
            if "json" in spec:
                jsonschema.validate(json.loads(out.text), spec["json"])
            else:
                assert re.fullmatch(spec["regex"], out.text), (spec, out.text)
        # without steering, some of these run out of tokens mid-match (the failure this fixes)
        cut_off = sum(b.outputs[0].finish_reason == "length" for b in before)
        print(f"{spec}: max_tokens {max_tokens}, {cut_off}/{len(before)} cut off without steering")
    tiny_llm.engine.check_integrity()


def test_outputs_that_fit_are_unchanged(tiny_llm):
    """Steering looks at the budget only within its horizon: outputs ending before are the same tokens."""
    from pagoda.structured.guided_logits_processor import _STEER_HORIZON

    max_tokens = 160
    for spec in [dict(json=s) for s in SCHEMAS] + [dict(regex=r) for r in REGEXES]:
        kw = dict(**spec, max_tokens=max_tokens, temperature=0.9)
        steered = tiny_llm.generate(PROMPTS, [guided_sampling_params(tiny_llm, **kw, seed=s) for s in range(4)],
                                    use_tqdm=False)
        free = tiny_llm.generate(PROMPTS, [guided_sampling_params(tiny_llm, **kw, seed=s, budget_steering=False)
                                           for s in range(4)], use_tqdm=False)
        for a, b in zip(steered, free, strict=True):
            if b.outputs[0].finish_reason == "stop" and len(b.outputs[0].token_ids) < max_tokens - _STEER_HORIZON:
                assert a.outputs[0].token_ids == b.outputs[0].token_ids
