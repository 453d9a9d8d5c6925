"""The ``triton`` attention backend inside the engine: a tiny random Llama generates the CPU backend's greedy
tokens (float32; Triton's interpreter here, compiled kernels on a GPU)."""

from __future__ import annotations

import pytest
import torch
from kernel_device import DEVICE, ON_GPU
from paged_case import paged_case

from pagoda import LLM, SamplingParams
from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.registry import ATTENTION_BACKENDS, resolve_backend
from pagoda.attention.triton_backend import TritonAttentionBackend

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. Paged attention stores keys and values in fixed-size blocks.",
    "The quick brown fox jumps over the lazy dog. Continuous batching lets new requests join",  # prefix hit
    "Hi",
    [5],  # a one-token prompt
]


def _generate(model_dir: str, backend: str, device: str = "cpu", padded_decode: bool = False) -> list[list[int]]:
    llm = LLM(model_dir, dtype="float32", attention_backend=backend, device=device, num_kv_blocks=64,
              max_num_batched_tokens=24, show_progress=False)  # 24-token budget: long prompts go in chunks
    runner = llm.engine.runner
    attn = runner.model.model.layers[0].self_attn.attn
    if backend == "triton":
        assert isinstance(attn, TritonAttentionBackend)
    else:  # the C++ CPU kernels, or the portable backend where they are not built
        assert type(attn).__name__ in ("CpuAttentionBackend", "TorchAttentionBackend")
    if padded_decode:  # the CUDA-graph path's static, padded buffers, run eagerly (a batch of 3 pads to 4)
        runner.enable_decode_graphs(4, 128, capture=False)
        graphs = runner.decode_graphs
        assert graphs.buckets == [1, 2, 4]
        padded_steps = []
        original_run = graphs.run
        graphs.run = lambda ids, pos, meta: padded_steps.append(graphs.bucket_for(meta.num_seqs)) or original_run(
            ids, pos, meta)
    assert len(llm.get_tokenizer().encode(PROMPTS[0])) > 24  # prefilled in chunks
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    first = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:1], params)]  # warms the prefix cache
    tokens = first + [o.outputs[0].token_ids for o in llm.generate(PROMPTS[1:], params)]
    if padded_decode:
        assert 1 in padded_steps and 4 in padded_steps  # alone, and three sequences padded to four
    return tokens


def test_tiny_llama_greedy_tokens_equal_cpu_backend(tiny_llama_dir):
    expected = _generate(tiny_llama_dir, "auto")
    assert _generate(tiny_llama_dir, "triton", DEVICE) == expected
    assert _generate(tiny_llama_dir, "triton", DEVICE, padded_decode=True) == expected


def test_backend_registry_and_auto_on_cuda():
    assert "triton" in ATTENTION_BACKENDS
    assert resolve_backend("triton") is TritonAttentionBackend
    assert resolve_backend("auto", torch.device("cuda")) is TritonAttentionBackend
    assert resolve_backend("auto", torch.device("cpu")) is resolve_backend("auto")
    assert resolve_backend("torch", torch.device("cuda")).__name__ == "TorchAttentionBackend"


def test_mixed_step_matches_torch_backend():
    """One flat step of two decodes and two prefill chunks (one after a prefix-cache hit) through the
    backend's forward: the same output and cache as the portable backend."""
    hkv, group, d, bs = 2, 3, 64, 16
    seq_lens, query_lens = [9, 33, 20, 40], [1, 1, 20, 12]
    case = paged_case(seq_lens, query_lens, hkv, group, d, bs, torch.float32, seed=5)
    g = torch.Generator().manual_seed(6)
    total = sum(query_lens)
    k, v = torch.randn(total, hkv, d, generator=g), torch.randn(total, hkv, d, generator=g)
    slots = []
    for i, (n, qn) in enumerate(zip(seq_lens, query_lens)):
        for p in range(n - qn, n):
            slots.append(int(case.block_tables[i, p // bs]) * bs + p % bs)
    outs, caches = [], []
    for backend, device in ((resolve_backend("torch"), "cpu"), (TritonAttentionBackend, DEVICE)):
        t = case.tensors(device)
        meta = AttentionMetadata(torch.tensor(slots, device=device), t["query_start_loc"], t["seq_lens"],
                                 t["block_tables"], num_decodes=2, max_seq_len=max(seq_lens),
                                 query_start_loc_list=case.query_start_loc, seq_lens_list=seq_lens)
        attn = backend(hkv * group, hkv, d, d ** -0.5)
        kc, vc = t["k_cache"].clone(), t["v_cache"].clone()
        outs.append(attn.forward(t["q"], k.to(device), v.to(device), kc, vc, meta).cpu())
        caches.append((kc.cpu(), vc.cpu()))
    assert (outs[0] - outs[1]).abs().max().item() < 1e-5
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])


@pytest.mark.skipif(ON_GPU, reason="the GPU is present: this checks the error without one")
def test_cuda_device_without_gpu_is_a_clear_error(tiny_llama_dir):
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        LLM(tiny_llama_dir, device="cuda", show_progress=False)


def test_decode_graph_buckets():
    from pagoda.engine.decode_graphs import batch_buckets

    assert batch_buckets(1) == [1]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
