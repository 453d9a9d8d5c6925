from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_tokenizer():
    """The bundled default model's tokenizer (49k byte-level BPE): the realistic vocabulary for masks."""
    from pagoda.weights.default_model import default_model_path
    from pagoda.weights.model_loader import ModelFiles

    return ModelFiles(default_model_path()).tokenizer(None)


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama_dir):
    from pagoda import LLM

    return LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=256, show_progress=False)


@pytest.fixture(scope="session")
def default_llm():
    from pagoda import LLM

    # room for ~100 sequences of ~700 tokens at once: no preemption (recompute) in the 112-schema batch
    return LLM(show_progress=False, max_num_seqs=128, kv_cache_memory_gb=4)
