"""Model-step times on a CUDA GPU for random-weight models of real shapes (Llama-3-8B, the default
SmolLM2-135M): prefill, then greedy decode at B = 64 and B = 1, eager and through CUDA graphs, against the
weight-streaming bound (streamed weight bytes / measured device copy bandwidth, read + write counted).

A step here is what the runner does on the device: step inputs built on the host and copied once, the
forward over the paged cache (Triton backend), the LM head on the last rows, argmax, one sync to read the
tokens. The scheduler is not in it. Weights are random: timings, not text. Results go to ``--out`` (JSON)
after every measurement, so a run cut short still reports.

    python -m pagoda.bench.gpu_step --out result.json [--shapes llama3-8b smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import ModelConfig
from pagoda.device import to_device
from pagoda.engine.decode_graphs import DecodeGraphs

SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                      max_position_embeddings=8192, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=384, rope_theta=10000.0, max_position_embeddings=512,
                 tie_word_embeddings=True, rms_norm_eps=1e-5),  # --dry-run: the CPU under Triton's interpreter
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, rope_theta=100000.0,
                         max_position_embeddings=8192, tie_word_embeddings=True, rms_norm_eps=1e-5),
}


def build_random_model(shape: str, device: torch.device, dtype: torch.dtype, max_model_len: int):
    """The model built directly on the GPU with random weights (no checkpoint to write or read)."""
    from pagoda.attention.registry import resolve_backend
    from pagoda.models.llama import LlamaForCausalLM

    config = ModelConfig.from_hf_config(dict(SHAPES[shape], architectures=["LlamaForCausalLM"]), dtype,
                                        max_model_len)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config, attention_backend=resolve_backend("triton"))
    finally:
        torch.set_default_dtype(old)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval(), config


def streamed_weight_bytes(model: Any, config: ModelConfig) -> int:
    """Bytes a decode step reads: every weight, but the embedding table only when it is also the LM head."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not config.tie_word_embeddings:
        emb = model.model.embed_tokens.weight
        total -= emb.numel() * emb.element_size()
    return total


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30, reps: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second (median of ``reps``)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 2):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times[2:])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PagedBatch:
    """B sequences of one prompt length, each on its own consecutive blocks of a shared cache."""

    def __init__(self, batch: int, prompt_len: int, max_len: int, block_size: int, vocab: int, seed: int) -> None:
        self.block_size = block_size
        per_seq = -(-max_len // block_size)
        self.tables = [list(range(1 + i * per_seq, 1 + (i + 1) * per_seq)) for i in range(batch)]
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (batch, prompt_len), generator=g).tolist()

    def slot(self, seq: int, pos: int) -> int:
        return self.tables[seq][pos // self.block_size] * self.block_size + pos % self.block_size

    def inputs(self, seqs: list[int], starts: list[int], device: torch.device):
        ids, pos, slots, qsl, lens = [], [], [], [0], []
        for s, start in zip(seqs, starts):
            end = len(self.tokens[s])
            ids += self.tokens[s][start:end]
            pos += list(range(start, end))
            slots += [self.slot(s, p) for p in range(start, end)]
            qsl.append(qsl[-1] + end - start)
            lens.append(end)
        num_decodes = sum(1 for s, start in zip(seqs, starts) if len(self.tokens[s]) - start == 1)
        metadata = AttentionMetadata(
            slot_mapping=to_device(slots, torch.int64, device), query_start_loc=to_device(qsl, torch.int64, device),
            seq_lens=to_device(lens, torch.int64, device),
            block_tables=to_device([self.tables[s] for s in seqs], torch.int64, device), num_decodes=num_decodes,
            max_seq_len=max(lens), query_start_loc_list=qsl, seq_lens_list=lens)
        return to_device(ids, torch.int64, device), to_device(pos, torch.int64, device), metadata


@torch.inference_mode()
def run_batch(model, kv_caches, batch: PagedBatch, gen_len: int, graphs: DecodeGraphs | None,
              device: torch.device, prefill_tokens: int = 2048) -> dict[str, float]:
    """Prefill every prompt (chunks of whole prompts up to ``prefill_tokens``), then ``gen_len`` greedy
    decode steps; returns the prefill rate and the median / p90 decode step."""
    n = len(batch.tokens)
    prompt_len = len(batch.tokens[0])
    per_chunk = max(1, prefill_tokens // prompt_len)
    _sync(device)
    start = time.perf_counter()
    for first in range(0, n, per_chunk):
        seqs = list(range(first, min(n, first + per_chunk)))
        ids, pos, meta = batch.inputs(seqs, [0] * len(seqs), device)
        hidden = model(ids, pos, kv_caches, meta)
        last = to_device([meta.query_start_loc_list[i + 1] - 1 for i in range(len(seqs))], torch.int64, device)
        next_tokens = model.compute_logits(hidden[last]).argmax(-1).tolist()
        for s, t in zip(seqs, next_tokens):
            batch.tokens[s].append(t)
    prefill_s = time.perf_counter() - start
    steps = []
    seqs = list(range(n))
    for _ in range(gen_len):
        t0 = time.perf_counter()
        ids, pos, meta = batch.inputs(seqs, [len(batch.tokens[s]) - 1 for s in seqs], device)
        if graphs is not None and graphs.can_run(meta):
            hidden = graphs.run(ids, pos, meta)
        else:
            hidden = model(ids, pos, kv_caches, meta)
        next_tokens = model.compute_logits(hidden).argmax(-1).tolist()  # the step's one sync
        for s, t in zip(seqs, next_tokens):
            batch.tokens[s].append(t)
        steps.append(time.perf_counter() - t0)
    steps.sort()
    return {"prefill_tok_s": n * prompt_len / prefill_s, "decode_step_ms_median": 1e3 * statistics.median(steps),
            "decode_step_ms_p90": 1e3 * steps[int(0.9 * (len(steps) - 1))],
            "decode_tok_s": n / statistics.median(steps)}


def bench_shape(shape: str, batches: list[int], prompt_len: int, gen_len: int, report, device: torch.device,
                block_size: int = 16, dtype: torch.dtype = torch.bfloat16) -> None:
    max_len = prompt_len + gen_len + block_size
    model, config = build_random_model(shape, device, dtype, max_len)
    weights = streamed_weight_bytes(model, config)
    bandwidth = copy_bandwidth(device, nbytes=(2 << 30) if device.type == "cuda" else (16 << 20))
    result: dict[str, Any] = {"streamed_weight_gb": weights / 1e9, "copy_bandwidth_tb_s": bandwidth / 1e12,
                              "weight_stream_bound_ms": 1e3 * weights / bandwidth}
    report(shape, result)
    from pagoda.attention.triton_backend import TritonAttentionBackend

    per_seq = -(-max_len // block_size)
    num_blocks = max(batches) * per_seq + 1
    shape_kv = TritonAttentionBackend.kv_cache_shape(num_blocks + 1, block_size, config.num_key_value_heads,
                                                     config.head_dim)
    kv_caches = [(torch.zeros(shape_kv, dtype=dtype, device=device), torch.zeros(shape_kv, dtype=dtype, device=device))
                 for _ in range(config.num_hidden_layers)]
    # warm-up: compiles every kernel variant outside the timings
    run_batch(model, kv_caches, PagedBatch(2, prompt_len, max_len, block_size, config.vocab_size, 99), 3, None,
              device)
    graphs = DecodeGraphs(model, kv_caches, max(batches), max_len, block_size, num_blocks, device)
    t0 = time.perf_counter()
    if device.type == "cuda":  # on the CPU (dry run) the graphs' padded path runs eagerly
        graphs.capture(show_progress=False)
    result["graph_capture_s"] = time.perf_counter() - t0
    for b in batches:
        for mode, g in (("eager", None), ("graphs", graphs)):
            r = run_batch(model, kv_caches, PagedBatch(b, prompt_len, max_len, block_size, config.vocab_size, b),
                          gen_len, g, device)
            r["vs_bound"] = r["decode_step_ms_median"] / result["weight_stream_bound_ms"]
            result[f"B{b}_{mode}"] = r
            report(shape, result)
    del graphs, kv_caches, model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama3-8b"], choices=sorted(SHAPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--dry-run", action="store_true",
                        help="the tiny shape in float32 on the CPU (set TRITON_INTERPRET=1): checks this script")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, shapes = torch.device("cpu"), torch.float32, ["tiny"]
    elif torch.cuda.is_available():
        device, dtype, shapes = torch.device("cuda"), torch.bfloat16, args.shapes
    else:
        raise SystemExit("pagoda.bench.gpu_step needs a CUDA GPU (or --dry-run)")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "torch": torch.__version__,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    printed: set[tuple[str, str]] = set()

    def report(shape: str, result: dict[str, Any]) -> None:
        results[shape] = result
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        for key, value in result.items():  # what is new since the last report
            if (shape, key) not in printed:
                printed.add((shape, key))
                print(shape, key, json.dumps(value), flush=True)

    for shape in shapes:
        bench_shape(shape, args.batches, args.prompt_len, args.gen_len, report, device, dtype=dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
