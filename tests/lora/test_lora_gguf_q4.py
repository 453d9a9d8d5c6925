"""QLoRA-style: adapters over the packed GGUF Q4 linears equal peft over the dequantized model."""

from __future__ import annotations

import os
import random

import pytest
from adapters import ALL, make_adapter, peft_reference
from gguf import GGMLQuantizationType as Q
from reference import assert_greedy_matches, assert_logprobs_match
from tiny_gguf import TINY, hf_weights, write_llama

from pagoda import LLM, LoRARequest, SamplingParams
from pagoda.quantization.gguf_int4 import Int4Linear


@pytest.mark.slow
def test_adapter_on_packed_q4_matches_peft(tmp_path):
    path = str(tmp_path / "tiny-q4.gguf")
    types = {"self_attn.q_proj.weight": Q.Q4_0, "self_attn.k_proj.weight": Q.Q4_0,
             "self_attn.v_proj.weight": Q.Q4_0, "self_attn.o_proj.weight": Q.Q4_1, "mlp.gate_proj.weight": Q.Q4_1,
             "mlp.up_proj.weight": Q.Q4_1, "mlp.down_proj.weight": Q.Q4_0}
    weights = {k: v * (6.0 if v.ndim == 2 else 1.0) for k, v in hf_weights(seed=1).items()}
    write_llama(path, weights, types)
    folder, name = os.path.dirname(path), os.path.basename(path)
    adapter = make_adapter(folder, str(tmp_path / "adapter"), seed=5, gguf_file=name, r=8, lora_alpha=16,
                           target_modules=ALL)
    ref = peft_reference(folder, adapter, gguf_file=name)
    llm = LLM(path, dtype="float32", quantization="gguf", enable_lora=True, num_kv_blocks=64, show_progress=False)
    packed = [m for m in llm.engine.runner.model.modules() if isinstance(m, Int4Linear)]
    assert len(packed) == 4 * TINY["layers"] and all(m.lora is not None for m in packed)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, TINY["vocab"]) for _ in range(rng.randint(2, 30))] for _ in range(4)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1)
    lora = LoRARequest("q4", 1, adapter)
    base = llm.generate(prompts, params, use_tqdm=False)
    outs = llm.generate(prompts, params, use_tqdm=False, lora_request=[lora, None, lora, lora])
    assert any(b.outputs[0].token_ids != o.outputs[0].token_ids for b, o in zip(base, outs, strict=True)
               if o is not outs[1])  # the adapter changes the output
    for i in (0, 2, 3):
        tokens = outs[i].outputs[0].token_ids
        assert_greedy_matches(ref, prompts[i], tokens)
        assert_logprobs_match(ref, prompts[i], tokens, outs[i].outputs[0].logprobs)
    assert outs[1].outputs[0].token_ids == base[1].outputs[0].token_ids
    llm.shutdown()
