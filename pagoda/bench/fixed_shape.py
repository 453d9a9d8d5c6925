"""Fixed-shape throughput for `pagoda bench throughput`: B prompts of ``prompt_len`` random tokens,
each generating exactly ``output_len`` tokens, timed on Pagoda and on transformers' batched ``generate``
in the same run (no figures of other runs or machines: those are no comparison).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

TRANSFORMERS = "transformers fp32"


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedShapeResult:
    system: str
    batch_size: int
    prompt_len: int
    output_len: int
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds


# -- workloads ------------------------------------------------------------------------------------
def random_prompts(batch_size: int, prompt_len: int, vocab_size: int, seed: str) -> list[list[int]]:
    """Seeds name the measurement ("0-B8"): prompts differ between measurements, so the prefix cache
    (on by default) never turns one measurement's prompts into another's cache hits."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(prompt_len)] for _ in range(batch_size)]


# -- fixed shapes ---------------------------------------------------------------------------------
def warm_up(llm, seed: int = 0) -> None:
    """One short batch first, so that lazy initialisation (and compilation) is not timed."""
    from pagoda import SamplingParams

    prompts = random_prompts(2, 16, llm.engine.model_config.vocab_size, f"{seed}-warm-up")
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)


def measure_pagoda(llm, system: str, batch_sizes: Sequence[int], prompt_len: int, output_len: int,
                   seed: int = 0, progress: bool = True) -> list[FixedShapeResult]:
    """Times ``llm.generate`` on each batch size (one warm-up first), greedy with ``ignore_eos``."""
    from tqdm import tqdm

    from pagoda import SamplingParams

    warm_up(llm, seed)
    vocab = llm.engine.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    results = []
    for b in (bar := tqdm(batch_sizes, desc=system, unit=" batch", disable=not progress)):
        prompts = random_prompts(b, prompt_len, vocab, f"{seed}-B{b}")
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        results.append(FixedShapeResult(system, b, prompt_len, output_len, generated, seconds))
        bar.set_postfix_str(f"B={b}: {results[-1].tokens_per_s:.1f} tok/s")
    return results


def measure_transformers(model: str, batch_sizes: Sequence[int], prompt_len: int, output_len: int,
                         vocab_size: int, seed: int = 0, progress: bool = True) -> list[FixedShapeResult]:
    """transformers' batched greedy ``generate`` in fp32 on the same prompts (a GGUF dequantized on load)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    if model.endswith(".gguf"):
        hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(model) or ".",
                                                  gguf_file=os.path.basename(model), dtype=torch.float32)
    else:
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    hf.eval()
    # min = max new tokens: exactly output_len each, like ignore_eos
    pad = hf.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else (pad if pad is not None else 0)

    def generate(prompts: list[list[int]], n: int) -> torch.Tensor:
        ids = torch.tensor(prompts)  # equal lengths: left padding is a no-op, the mask is all ones
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                               min_new_tokens=n, pad_token_id=pad)

    generate(random_prompts(2, 16, vocab_size, f"{seed}-warm-up"), 4)
    results = []
    for b in (bar := tqdm(batch_sizes, desc=TRANSFORMERS, unit=" batch", disable=not progress)):
        prompts = random_prompts(b, prompt_len, vocab_size, f"{seed}-B{b}")
        start = time.perf_counter()
        out = generate(prompts, output_len)
        seconds = time.perf_counter() - start
        results.append(FixedShapeResult(TRANSFORMERS, b, prompt_len, output_len,
                                        int(out[:, prompt_len:].numel()), seconds))
        bar.set_postfix_str(f"B={b}: {results[-1].tokens_per_s:.1f} tok/s")
    return results
