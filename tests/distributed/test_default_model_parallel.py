"""The bundled model (9 query / 3 KV heads, 30 layers) split over ranks: TP 3 (3 query heads and
one KV head a rank) and PP 2 give the greedy tokens of one process, logprobs within 1e-4 (float32)."""

from __future__ import annotations

import pytest
from test_tensor_parallel import GREEDY, PROMPTS, assert_same

from pagoda.weights.default_model import default_model_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference():
    from pagoda import LLM

    llm = LLM(None, dtype="float32", quantization=None, num_kv_blocks=64, show_progress=False)
    return llm.generate(PROMPTS, GREEDY, use_tqdm=False)


@pytest.mark.parametrize("layout", [{"tensor_parallel_size": 3}, {"pipeline_parallel_size": 2}], ids=["tp3", "pp2"])
def test_default_model_split_matches_one_process(reference, make_llm, layout):
    llm = make_llm(default_model_path(), quantization=None, **layout)
    assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    assert len(llm.engine.runner.stats().busy_s) == (3 if "tensor_parallel_size" in layout else 2)
