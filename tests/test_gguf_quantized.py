"""quantization="gguf": Q4_0 / Q4_1 matrices stay packed and give the dequantized model's outputs."""

import os
import random

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from reference import assert_greedy_matches
from tiny_gguf import TINY, hf_weights, write_llama

from pagoda import LLM, SamplingParams
from pagoda.quantization.gguf_int4 import Int4Linear, unpack_q4


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("q4") / "tiny-q4.gguf")
    types = {"self_attn.q_proj.weight": Q.Q4_0, "self_attn.k_proj.weight": Q.Q4_0,
             "self_attn.v_proj.weight": Q.Q4_0, "self_attn.o_proj.weight": Q.Q4_1, "mlp.gate_proj.weight": Q.Q4_1,
             "mlp.up_proj.weight": Q.Q4_1, "mlp.down_proj.weight": Q.Q4_0, "embed_tokens.weight": Q.Q8_0}
    # larger weights than the default so logits are far from ties
    weights = {k: v * (6.0 if v.ndim == 2 else 1.0) for k, v in hf_weights(seed=1).items()}
    stored = write_llama(path, weights, types)
    return path, stored


@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_1])
def test_unpacked_codes_reproduce_the_dequantized_weights(q4_gguf, kind):
    _, stored = q4_gguf
    name = next(n for n, (k, _, _) in stored.items() if k == kind)
    _, packed, dequantized = stored[name]
    q, scale, zero = unpack_q4(kind, packed, dequantized.shape)
    w = (q.float() - 8) * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1)
    torch.testing.assert_close(w, torch.from_numpy(dequantized), rtol=0, atol=1e-6)


def test_packed_model_matches_dequantized_and_transformers(q4_gguf):
    from transformers import AutoModelForCausalLM

    path, _ = q4_gguf
    packed = LLM(path, dtype="float32", quantization="gguf", num_kv_blocks=64, show_progress=False)
    linears = [m for m in packed.engine.runner.model.modules() if isinstance(m, Int4Linear)]
    assert len(linears) == 4 * TINY["layers"]  # qkv, o, gate_up, down per layer
    dense = LLM(path, dtype="float32", quantization=None, num_kv_blocks=64, show_progress=False)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, TINY["vocab"]) for _ in range(rng.randint(2, 40))] for _ in range(6)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)
    a = packed.generate(prompts, params)
    b = dense.generate(prompts, params)
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32).eval()
    for prompt, x, y in zip(prompts, a, b, strict=True):
        assert_greedy_matches(ref, prompt, x.outputs[0].token_ids)
        assert_greedy_matches(ref, prompt, y.outputs[0].token_ids)
        if x.outputs[0].token_ids == y.outputs[0].token_ids:
            for lx, ly in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
                tok = next(iter(lx))
                assert abs(lx[tok].logprob - ly[tok].logprob) < 1e-4
