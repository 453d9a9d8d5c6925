from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # tests/triton run Triton's kernels on its CPU interpreter, which must be on before anything (diffusers,
    # torch._dynamo) imports triton.language: its own @jit helpers (tl.zeros, ...) are built at that import
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import build_tiny_model  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A random Llama (GQA 4/2 heads, tied embeddings) with a small BPE tokenizer and ChatML template."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Builds (once per set of options) a tiny model directory: arch, tie, rope_scaling, num_kv_heads."""
    cache: dict[tuple, str] = {}

    def make(**options) -> str:
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        if key not in cache:
            cache[key] = build_tiny_model(str(tmp_path_factory.mktemp("tiny")), **options)
        return cache[key]

    return make
