"""Constrained requests in the engine (tiny random model): mixed freely with unconstrained ones."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from pagoda import SamplingParams
from pagoda.errors import InvalidRequestError
from pagoda.structured import guided_sampling_params

SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 99},
        "ok": {"type": "boolean"},
        "note": {"type": "string", "maxLength": 6},
    },
    "required": ["colour", "count"],
    "additionalProperties": False,
}
PHONE = r"\d{3}-\d{4}"
CHOICES = ["alpha", "beta", "gamma delta"]
GRAMMAR = 'start: "(" item ("," item)* ")"\nitem: /[a-c]/ | start'


def test_mixed_batch_constraints_hold_and_unconstrained_output_is_unchanged(tiny_llm):
    plain = SamplingParams(max_tokens=12, temperature=0)
    alone = tiny_llm.generate("Hello world", plain, use_tqdm=False)[0].outputs[0].token_ids
    params = [
        plain,
        guided_sampling_params(tiny_llm, json=SCHEMA, max_tokens=120, temperature=0.8, seed=1),
        guided_sampling_params(tiny_llm, regex=PHONE, max_tokens=20, temperature=1.0, seed=2),
        guided_sampling_params(tiny_llm, choice=CHOICES, max_tokens=20, temperature=1.0, seed=3),
        guided_sampling_params(tiny_llm, grammar=GRAMMAR, max_tokens=120, temperature=0.5, seed=4),
        guided_sampling_params(tiny_llm, json_object=True, max_tokens=200, temperature=0, seed=5),
    ]
    prompts = ["Hello world", "The quick brown fox", "Call me at", "Pick one:", "A list:", "JSON:"]
    outs = [o.outputs[0] for o in tiny_llm.generate(prompts, params, use_tqdm=False)]
    assert outs[0].token_ids == alone
    assert all(o.finish_reason == "stop" for o in outs[1:5]), [(o.text, o.finish_reason) for o in outs]
    jsonschema.validate(json.loads(outs[1].text), SCHEMA)
    assert re.fullmatch(PHONE, outs[2].text, re.ASCII)
    assert outs[3].text in CHOICES
    assert re.fullmatch(r"[()a-c,]+", outs[4].text) and outs[4].text.count("(") == outs[4].text.count(")")
    if outs[5].finish_reason == "stop":
        assert isinstance(json.loads(outs[5].text), dict)


def test_one_params_object_shared_by_prompts_and_n_samples(tiny_llm):
    params = guided_sampling_params(tiny_llm, json=SCHEMA, max_tokens=120, temperature=1.0, seed=11, n=3)
    outs = tiny_llm.generate(["a", "b", "Hello"], params, use_tqdm=False)
    texts = [c.text for o in outs for c in o.outputs]
    assert len(texts) == 9
    for o in outs:
        for c in o.outputs:
            assert c.finish_reason == "stop", c.text
            jsonschema.validate(json.loads(c.text), SCHEMA)
    assert len(set(texts)) > 1  # samples differ, yet every one is valid


def test_logprobs_turn_jump_forward_off_but_keep_the_constraint(tiny_llm):
    before = tiny_llm.engine.get_stats().jump_forward_tokens_total
    params = guided_sampling_params(tiny_llm, json=SCHEMA, max_tokens=120, temperature=0, logprobs=2)
    out = tiny_llm.generate("Hello", params, use_tqdm=False)[0].outputs[0]
    assert tiny_llm.engine.get_stats().jump_forward_tokens_total == before
    jsonschema.validate(json.loads(out.text), SCHEMA)
    assert len(out.logprobs) == len(out.token_ids)


def test_length_cut_ends_cleanly(tiny_llm):
    params = guided_sampling_params(tiny_llm, json=SCHEMA, max_tokens=3, temperature=0)
    out = tiny_llm.generate("Hello", params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3
    assert '{"colour":"'.startswith(out.text)  # the forced prefix, cut at max_tokens


def test_invalid_spec_raises_before_anything_is_queued(tiny_llm):
    with pytest.raises(InvalidRequestError) as info:
        guided_sampling_params(tiny_llm, regex="(unclosed", max_tokens=5)
    assert info.value.param == "guided_regex"
    assert not tiny_llm.engine.has_unfinished_requests()
