"""The bundled SmolLM2-135M-Instruct GGUF against transformers' own GGUF loading (float32)."""

import os

import pytest
import torch
from reference import assert_greedy_matches, assert_logprobs_match

from pagoda import LLM, SamplingParams
from pagoda.weights.default_model import default_model_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "def fibonacci(n):",
    "Translate 'good morning' into Spanish.",
    "Explain paged attention in one sentence.",
    "1, 2, 3, 4,",
    "The weather today is",
    "Once upon a time, in a land far away, there lived a small dragon who loved to read books about the stars "
    "and the planets and dreamed of flying to the moon one day.",
    "Summarise: Continuous batching lets an inference server add new requests to the running batch at every "
    "decoding step instead of waiting for the whole batch to finish, which keeps the hardware busy.",
    "Q: What is 12 times 12?\nA:",
    "Bonjour, comment allez-vous ?",
    "The three laws of thermodynamics are",
    "import numpy as np\nx = np.arange(10)\n",
    "Give me a short motivational quote.",
]


@pytest.fixture(scope="module")
def reference_model():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.float32).eval()


def test_bundled_gguf_matches_transformers_in_one_batch(reference_model):
    llm = LLM(dtype="float32", quantization=None, show_progress=False)
    tok = llm.get_tokenizer()
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False),
                          add_special_tokens=False) for p in PROMPTS]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2))
    ties = 0
    for prompt, out in zip(prompts, outs, strict=True):
        o = out.outputs[0]
        ties += assert_greedy_matches(reference_model, prompt, o.token_ids)
        assert_logprobs_match(reference_model, prompt, o.token_ids, o.logprobs)
    assert ties <= 2
    assert "Paris" in outs[1].outputs[0].text
