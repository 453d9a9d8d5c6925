"""Checks Pagoda's outputs against a Hugging Face transformers model, teacher-forced.

Running the reference over prompt + Pagoda's output in one forward gives the reference logits
at every generated position, so each greedy token can be checked against the reference's argmax
(the tie rule: a different token is accepted only where the reference's top-two logits are
within 1e-4, and ours is one of them), and each logprob against its log-softmax.
"""

from __future__ import annotations

import torch

TIE = 1e-4


def reference_logits(model, prompt_ids: list[int], output_ids: list[int]) -> torch.Tensor:
    """[len(output_ids), vocab] float32 logits that predicted each output token."""
    ids = torch.tensor([prompt_ids + output_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    p = len(prompt_ids)
    return logits[p - 1: p - 1 + len(output_ids)]


def assert_greedy_matches(model, prompt_ids: list[int], output_ids: list[int]) -> int:
    """Asserts every token is the reference's argmax up to ties; returns the number of ties met."""
    logits = reference_logits(model, prompt_ids, output_ids)
    ties = 0
    for k, tok in enumerate(output_ids):
        row = logits[k]
        best = int(row.argmax())
        if tok == best:
            continue
        top2 = row.topk(2)
        gap = float(top2.values[0] - top2.values[1])
        assert tok in top2.indices.tolist() and gap < TIE, (
            f"step {k}: got {tok}, reference argmax {best} (top-two gap {gap:.2e} is not a tie)")
        ties += 1
    return ties


def assert_logprobs_match(model, prompt_ids: list[int], output_ids: list[int], logprobs: list[dict], atol=1e-4):
    ref = torch.log_softmax(reference_logits(model, prompt_ids, output_ids), dim=-1)
    assert len(logprobs) == len(output_ids)
    for k, entry in enumerate(logprobs):
        for tok, lp in entry.items():
            assert abs(lp.logprob - float(ref[k, tok])) < atol, (k, tok, lp.logprob, float(ref[k, tok]))
            assert lp.rank == int((ref[k] > ref[k, tok]).sum()) + 1 or abs(
                float(ref[k].sort(descending=True).values[lp.rank - 1]) - float(ref[k, tok])) < atol


def assert_all_blocks_returned(engine) -> None:
    """No request holds a block; every block is free or held only by the prefix cache."""
    engine.check_integrity()
    kv = engine.kv_cache
    assert not kv.block_tables
    cached = len(kv.cache.blocks()) if kv.cache is not None else 0
    assert kv.num_free_blocks + cached == engine.cache_config.num_blocks
    assert kv.usage == 0.0
