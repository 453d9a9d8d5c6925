"""What only a real GPU shows: bf16 kernels (the interpreter computes bf16 ``tl.dot`` wrongly), CUDA graphs,
pinned host buffers, FP8 through cuBLASLt, and the engine on ``device="cuda"`` equal to the CPU.

Marked ``gpu``: skipped only when torch sees no GPU; ``scripts/gpu_check.sh`` runs them on the lent device.
"""

from __future__ import annotations

import pytest
import torch
from kernel_device import ON_GPU
from paged_case import paged_case

from pagoda import LLM, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")]

PROMPTS = ["The quick brown fox jumps over the lazy dog. Paged attention stores keys and values",
           "The quick brown fox jumps over the lazy dog. Continuous", "Hi", [5]]


@pytest.mark.parametrize("group", [1, 3, 8])
def test_bf16_attention_kernels(group):
    from pagoda.kernels.triton.attention_reference import paged_attention_reference
    from pagoda.kernels.triton.decode_attention import paged_decode_attention
    from pagoda.kernels.triton.prefill_attention import paged_prefill_attention

    seq_lens, query_lens = [1, 70, 300, 600], [1, 70, 44, 1]
    case = paged_case(seq_lens, query_lens, 2, group, 128, 16, torch.bfloat16, seed=7)
    t = case.tensors("cuda")
    ref = paged_attention_reference(case.q, case.k_cache, case.v_cache, case.block_tables, case.query_start_loc,
                                    seq_lens, 0.088)
    out = torch.empty(t["q"].shape, dtype=torch.bfloat16, device="cuda")
    paged_prefill_attention(out, t["q"], t["k_cache"], t["v_cache"], t["block_tables"], t["query_start_loc"],
                            t["seq_lens"], 0.088, max(query_lens))
    torch.testing.assert_close(out.float().cpu(), ref, atol=2e-2, rtol=2e-2)
    decode = paged_case(seq_lens, [1] * 4, 2, group, 128, 16, torch.bfloat16, seed=8)
    t = decode.tensors("cuda")
    ref = paged_attention_reference(decode.q, decode.k_cache, decode.v_cache, decode.block_tables,
                                    decode.query_start_loc, seq_lens, 0.088)
    out = torch.empty(t["q"].shape, dtype=torch.bfloat16, device="cuda")
    paged_decode_attention(out, t["q"], t["k_cache"], t["v_cache"], t["block_tables"], t["seq_lens"], 0.088,
                           max(seq_lens), split_tokens=128)
    torch.testing.assert_close(out.float().cpu(), ref, atol=2e-2, rtol=2e-2)


def _greedy(model_dir: str, **options) -> list[list[int]]:
    llm = LLM(model_dir, dtype="float32", num_kv_blocks=64, max_num_seqs=4, max_num_batched_tokens=24,
              show_progress=False, **options)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    first = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:1], params)]
    return first + [o.outputs[0].token_ids for o in llm.generate(PROMPTS[1:], params)]


def test_cuda_engine_greedy_equals_cpu(tiny_llama_dir):
    torch.backends.cuda.matmul.allow_tf32 = False
    expected = _greedy(tiny_llama_dir, device="cpu")
    assert _greedy(tiny_llama_dir, device="cuda", enforce_eager=True) == expected
    assert _greedy(tiny_llama_dir, device="cuda") == expected  # decode through CUDA graphs
    assert _greedy(tiny_llama_dir, device="auto") == expected


def test_cuda_graphs_are_captured_and_replayed(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="bfloat16", device="cuda", num_kv_blocks=64, max_num_seqs=8,
              show_progress=False)
    runner = llm.engine.runner
    graphs = runner.decode_graphs
    assert graphs is not None and sorted(graphs.graphs) == [1, 2, 4, 8]
    replays = []
    original = graphs.run
    graphs.run = lambda ids, pos, meta: replays.append(meta.num_seqs) or original(ids, pos, meta)
    outs = llm.generate(["Hello", "The quick", "def add"], SamplingParams(temperature=0, max_tokens=5,
                                                                           ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 5 for o in outs)
    assert 3 in replays
    eager = LLM(tiny_llama_dir, dtype="bfloat16", device="cuda", num_kv_blocks=64, max_num_seqs=8,
                enforce_eager=True, show_progress=False)
    assert eager.engine.runner.decode_graphs is None


def test_step_inputs_are_copied_from_pinned_memory():
    from pagoda.device import resolve_device, to_device

    device = resolve_device("auto")
    assert device.type == "cuda"
    t = to_device([3, 1, 4, 1, 5], torch.int64, device)
    assert t.is_cuda and t.tolist() == [3, 1, 4, 1, 5]
    with pytest.raises(ValueError, match="visible"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_fp8_linear_on_gpu():
    from pagoda.layers.linear import ColumnParallelLinear
    from pagoda.quantization.fp8 import Fp8Linear, quantize_rows

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9")
    layer = ColumnParallelLinear(256, 128, bias=True).to("cuda", torch.bfloat16)
    torch.nn.init.normal_(layer.weight, std=0.05)
    torch.nn.init.normal_(layer.bias)
    fp8 = Fp8Linear(layer)
    x = torch.randn(7, 256, device="cuda", dtype=torch.bfloat16)
    codes, scale = quantize_rows(x)
    ref = (codes.float() * scale) @ fp8.dequantized_weight().t() + layer.bias.float()
    torch.testing.assert_close(fp8(x).float(), ref, atol=2e-2 * ref.abs().max().item(), rtol=1e-2)


def test_fp8_model_on_gpu(tiny_llama_dir):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9")
    llm = LLM(tiny_llama_dir, dtype="bfloat16", device="cuda", quantization="fp8", num_kv_blocks=64,
              show_progress=False)
    out = llm.generate("Hello world", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4


def test_tensor_parallel_on_cuda_is_refused(tiny_llama_dir):
    with pytest.raises(ValueError, match="multi-GPU over NCCL is not implemented"):
        LLM(tiny_llama_dir, device="cuda", tensor_parallel_size=2, show_progress=False)
