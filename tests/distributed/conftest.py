from __future__ import annotations

import pytest

from pagoda import LLM


@pytest.fixture
def make_llm():
    """Builds LLMs and closes their executors at the end of the test (no stray ranks)."""
    made: list[LLM] = []

    def make(model: str | None, **options) -> LLM:
        options.setdefault("dtype", "float32")
        options.setdefault("num_kv_blocks", 64)
        options.setdefault("show_progress", False)
        llm = LLM(model, **options)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.shutdown()
