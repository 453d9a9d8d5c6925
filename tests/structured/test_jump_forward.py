"""Jump-forward appends exactly the tokens stepwise decoding would be forced to produce."""

from __future__ import annotations

import json

import jsonschema
import torch

from pagoda.structured import GuidedDecodingParams, guided_logits_processor, guided_sampling_params

LONG_KEYS = {
    "type": "object",
    "properties": {
        "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 999},
        "customer_preferred_contact_method": {"enum": ["email", "telephone", "postal_mail"]},
        "customer_is_currently_subscribed": {"type": "boolean"},
        "customer_notes": {"type": "string", "maxLength": 12},
    },
    "required": ["customer_identification_number", "customer_preferred_contact_method",
                 "customer_is_currently_subscribed", "customer_notes"],
    "additionalProperties": False,
}


def _fake_logits(tokens: list[int], vocab: int) -> torch.Tensor:
    """A deterministic 'model': logits depend only on the token history."""
    g = torch.Generator().manual_seed(hash(tuple(tokens)) % (1 << 31))
    return torch.randn(vocab, generator=g) * 3


def _decode(processor, vocab: int, eos: int, jump_forward: bool, limit: int = 300) -> tuple[list[int], int]:
    tokens: list[int] = []
    steps = 0
    while len(tokens) < limit:
        logits = processor(tokens, _fake_logits(tokens, vocab))
        probs = torch.softmax(logits, -1)
        g = torch.Generator().manual_seed(len(tokens))  # position-seeded, as the engine's seeded draws
        token = int(torch.multinomial(probs, 1, generator=g))
        steps += 1
        tokens.append(token)
        if token == eos:
            break
        if jump_forward:
            forced = processor.forced_tokens(tokens)
            tokens.extend(forced)
            if forced and forced[-1] == eos:
                break
    return tokens, steps


def test_jump_forward_equals_stepwise_and_saves_steps(default_tokenizer):
    tok = default_tokenizer
    spec = GuidedDecodingParams(json=LONG_KEYS)
    stepwise, stepwise_steps = _decode(guided_logits_processor(spec, tok, jump_forward=False),
                                       tok.vocab_size, tok.eos_token_id, jump_forward=False)
    jumped, jumped_steps = _decode(guided_logits_processor(spec, tok), tok.vocab_size, tok.eos_token_id,
                                   jump_forward=True)
    assert jumped == stepwise
    print(f"\n{len(stepwise)} tokens: {stepwise_steps} sampling steps stepwise, {jumped_steps} with jump-forward")
    assert stepwise[-1] == tok.eos_token_id
    jsonschema.validate(json.loads(tok.decode(stepwise)), LONG_KEYS)
    # the long keys (and punctuation) are forced: most of the output needs no model step
    assert jumped_steps <= stepwise_steps // 2, (jumped_steps, stepwise_steps)


def test_engine_jump_forward_output_matches_stepwise(tiny_llm):
    schema = {"type": "object", "properties": {
        "a_rather_long_property_name": {"enum": ["x", "y"]},
        "another_long_property_name": {"type": "boolean"}},
        "required": ["a_rather_long_property_name", "another_long_property_name"],
        "additionalProperties": False}
    prompts = ["Hello world", "The quick brown fox", "1, 2, 3"]
    results = {}
    for jump_forward in (False, True):
        before = tiny_llm.engine.get_stats().jump_forward_tokens_total
        params = [guided_sampling_params(tiny_llm, json=schema, jump_forward=jump_forward, max_tokens=80,
                                         temperature=t, seed=7) for t in (0.0, 0.8, 1.0)]
        outs = tiny_llm.generate(prompts, params, use_tqdm=False)
        results[jump_forward] = [o.outputs[0].token_ids for o in outs]
        saved = tiny_llm.engine.get_stats().jump_forward_tokens_total - before
        for o in outs:
            assert o.outputs[0].finish_reason == "stop"
            jsonschema.validate(json.loads(o.outputs[0].text), schema)
        assert (saved > 20) == jump_forward, saved
    assert results[True] == results[False]
