"""`pagoda bench lora`: multi-LoRA serving cost, in one run on one machine.

1. Mixed batch: ``--num-requests`` requests spread over ``--num-adapters`` adapters of rank
   ``--rank`` (every projection targeted) against the same batch on the base model alone, in
   interleaved rounds on one engine (fresh random prompts every run, prefix caching off).
2. Rotation: ``--rotation-adapters`` adapters round-robin over the requests with
   ``--max-loras`` slots (LRU swapping from host memory) against all of them resident; then the
   time to first token of one request whose adapter is resident, swapped out to host memory (cold),
   and never loaded before (read from disk).

Adapters are random PEFT directories written for the model's shapes (their outputs are noise;
the cost is what is measured). Example::

    flock /tmp/pagoda-bench.lock pagoda bench lora            # default model, ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from typing import Any

HELP = "multi-LoRA: mixed-adapter batch vs base, slot rotation vs all resident, cold-adapter TTFT"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF directory or .gguf (default: the bundled model)")
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--num-adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved base / mixed runs")
    parser.add_argument("--rotation-adapters", type=int, default=16)
    parser.add_argument("--max-loras", type=int, default=4, help="slots of the rotation part")
    parser.add_argument("--skip-rotation", action="store_true")


def write_random_adapter(out_dir: str, config: Any, rank: int, seed: int) -> str:
    """A PEFT LoRA directory (all projections, alpha = 2 rank) with small random A and B."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    h, inter, d = config.hidden_size, config.intermediate_size, config.head_dim
    shapes = {"q_proj": (h, config.num_attention_heads * d), "k_proj": (h, config.num_key_value_heads * d),
              "v_proj": (h, config.num_key_value_heads * d), "o_proj": (config.num_attention_heads * d, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module, (fan_in, fan_out) in shapes.items():
            group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{group}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * 0.01
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS),
                   "bias": "none", "use_dora": False}, f)
    return out_dir


def _prompts(n: int, length: int, vocab: int, rng: random.Random) -> list[list[int]]:
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(n)]


def _timed(llm: Any, prompts: list[list[int]], params: Any, loras: list[Any]) -> float:
    """Generated tokens per second over one generate call."""
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def _ttft(llm: Any, prompt: list[int], lora: Any) -> float:
    from pagoda import SamplingParams

    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True), use_tqdm=False,
                       lora_request=lora)[0]
    assert out.metrics.first_token_time is not None
    return out.metrics.first_token_time - out.metrics.arrival_time


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f}  [{min(values):.1f} - {max(values):.1f}]"


def run(args: argparse.Namespace) -> int:
    from pagoda import LLM, LoRARequest, SamplingParams

    rng = random.Random(0)
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    from pagoda.engine.args import EngineArgs

    # the engine's default max_lora_rank (what users get), raised only for a larger --rank
    max_rank = max(args.rank, EngineArgs.__dataclass_fields__["max_lora_rank"].default)
    common: dict[str, Any] = dict(num_threads=args.num_threads, max_num_seqs=args.num_requests,
                                  enable_prefix_caching=False, show_progress=False, enable_lora=True,
                                  max_lora_rank=max_rank)
    with tempfile.TemporaryDirectory(prefix="pagoda-lora-bench-") as tmp:
        llm = LLM(args.model, max_loras=args.num_adapters, **common)
        config = llm.engine.model_config
        vocab = config.vocab_size
        count = max(args.num_adapters, args.rotation_adapters)
        adapters = [LoRARequest(f"a{i}", i + 1, write_random_adapter(os.path.join(tmp, f"a{i}"), config, args.rank, i))
                    for i in range(count)]
        print(f"model {llm.engine.model_name}; {args.num_requests} requests x ({args.prompt_len} prompt + "
              f"{args.output_len} generated) tokens; {args.num_threads} threads; {time.strftime('%Y-%m-%d %H:%M')}")
        mixed = [adapters[i % args.num_adapters] for i in range(args.num_requests)]
        _timed(llm, _prompts(4, args.prompt_len, vocab, rng), params, mixed[:4])  # warm-up: adapters to slots
        base_runs, lora_runs = [], []
        for _ in range(args.rounds):
            base_runs.append(_timed(llm, _prompts(args.num_requests, args.prompt_len, vocab, rng), params,
                                    [None] * args.num_requests))
            lora_runs.append(_timed(llm, _prompts(args.num_requests, args.prompt_len, vocab, rng), params, mixed))
        print(f"\n1. mixed batch over {args.num_adapters} adapters of rank {args.rank} (generated tok/s, median "
              f"[range] of {args.rounds} interleaved rounds)")
        print(f"   base model only      {_summary(base_runs)}")
        print(f"   mixed adapters       {_summary(lora_runs)}")
        print(f"   ratio mixed / base   {statistics.median(lora_runs) / statistics.median(base_runs):8.2f}")
        llm.shutdown()
        if args.skip_rotation:
            return 0
        rotation = [adapters[i % args.rotation_adapters] for i in range(args.num_requests)]
        engines = {"all resident": LLM(args.model, max_loras=args.rotation_adapters, **common),
                   f"max_loras={args.max_loras}": LLM(args.model, max_loras=args.max_loras, **common)}
        probe = _prompts(1, args.prompt_len, vocab, rng)[0]
        results: dict[str, dict[str, list[float]]] = {name: {"tput": [], "warm": [], "cold": []} for name in engines}
        disk: dict[str, float] = {}
        for name, engine in engines.items():
            disk[name] = _ttft(engine, probe, adapters[0])  # first use: read from disk, sharded, placed
        for _ in range(args.rounds):
            for name, engine in engines.items():
                r = results[name]
                r["tput"].append(_timed(engine, _prompts(args.num_requests, args.prompt_len, vocab, rng), params,
                                        rotation))
                last = rotation[-1]
                r["warm"].append(_ttft(engine, probe, last))  # resident in both engines
                # the adapter least recently used: swapped out with max_loras slots, resident with all
                lru = rotation[-args.rotation_adapters]
                r["cold"].append(_ttft(engine, probe, lru))
        swaps = {name: engine.engine.runner.lora.num_swaps for name, engine in engines.items()}
        print(f"\n2. {args.rotation_adapters} adapters round-robin over {args.num_requests} requests")
        print(f"   {'engine':18} {'gen tok/s':>20}   {'TTFT resident (ms)':>22}   {'TTFT after swap-out (ms)':>26}"
              f"   {'TTFT first use, disk (ms)':>26}   swaps")
        for name, r in results.items():
            print(f"   {name:18} {_summary(r['tput']):>20}   {_summary([v * 1e3 for v in r['warm']]):>22}   "
                  f"{_summary([v * 1e3 for v in r['cold']]):>26}   {disk[name] * 1e3:26.1f}   {swaps[name]}")
        for engine in engines.values():
            engine.shutdown()
    return 0
