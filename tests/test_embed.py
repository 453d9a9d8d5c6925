"""Embeddings from the engine's prefill (``LLM.embed``) against transformers' final hidden states."""

from __future__ import annotations

import pytest
import torch
from embedding_reference import reference_embeddings  # noqa: E402

from pagoda import LLM, SamplingParams
from pagoda.errors import InvalidRequestError

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world!",
         "Paged attention stores keys and values in fixed-size blocks. " * 3]


@pytest.mark.parametrize("pooling,normalize", [("last", True), ("mean", True), ("mean", False)])
def test_embed_equals_transformers(tiny_llama_dir, pooling, normalize):
    # a small chunk budget splits the long prompt over several steps (mean pooling accumulates)
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, max_num_batched_tokens=16, show_progress=False)
    got = llm.embed(TEXTS, pooling=pooling, normalize=normalize)
    # twice: the second run hits the prefix cache, which must not change the result
    again = llm.embed(TEXTS, pooling=pooling, normalize=normalize)
    for g, a, ref in zip(got, again, reference_embeddings(tiny_llama_dir, TEXTS, pooling, normalize), strict=True):
        torch.testing.assert_close(torch.tensor(g), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(a), ref, atol=1e-5, rtol=1e-5)
    llm.engine.check_integrity()


def test_pooling_params_are_checked():
    with pytest.raises(InvalidRequestError, match="pooling"):
        SamplingParams(pooling="max")
    with pytest.raises(InvalidRequestError, match="n must be 1"):
        SamplingParams(pooling="mean", n=2)
