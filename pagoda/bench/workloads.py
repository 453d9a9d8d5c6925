"""Synthetic, seeded serving workloads (no downloads): ShareGPT-like, random, shared-prefix.

Prompts are English-like word sequences. Each word of the list is a single token for the
usual byte-level BPE vocabularies when preceded by a space, so a prompt of ``n`` words is
close to ``n`` tokens; the load generator reports the server's own token counts anyway.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which be this has had "
    "not but also first one their its new after who they two been more she other all time can when into "
    "there would up out only some many year over about most may then these such city world state people "
    "work school part known made because used between during under war later while where since life both "
    "three early before well through each music year film game team house water number system group "
    "history place night light small large long great good right left high low old young word point way "
    "day man woman child country government company family service power market story model data value"
).split()


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    prompt_len: int  # intended length in tokens (approximately what the server will count)
    output_len: int  # max_tokens asked for


def _text(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, num_words)))


def random_workload(num_prompts: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                    seed: int = 0) -> list[BenchRequest]:
    """Lengths uniform in [len * (1 - range_ratio), len * (1 + range_ratio)] (vLLM's random dataset)."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError("range_ratio must be in [0, 1)")
    rng = random.Random(seed)

    def draw(n: int) -> int:
        return max(1, rng.randint(math.floor(n * (1 - range_ratio)), math.ceil(n * (1 + range_ratio))))

    out = []
    for _ in range(num_prompts):
        n_in, n_out = draw(input_len), draw(output_len)
        out.append(BenchRequest(_text(rng, n_in), n_in, n_out))
    return out


def sharegpt_like_workload(num_prompts: int, max_input_len: int = 1024, max_output_len: int = 512,
                           seed: int = 0) -> list[BenchRequest]:
    """ShareGPT's length mix without the data set: log-normal input and output lengths whose medians
    (~100 and ~150 tokens) and long right tails follow the conversations vLLM benchmarks use; clipped to
    [4, max] like vLLM's filter."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_prompts):
        n_in = int(min(max_input_len, max(4, rng.lognormvariate(math.log(100), 1.0))))
        n_out = int(min(max_output_len, max(4, rng.lognormvariate(math.log(150), 0.8))))
        out.append(BenchRequest(_text(rng, n_in), n_in, n_out))
    return out


def shared_prefix_workload(num_groups: int, prompts_per_group: int, system_prompt_len: int,
                           question_len: int, output_len: int, seed: int = 0) -> list[BenchRequest]:
    """Groups of prompts sharing a long system prompt (a prefix cache's best case), groups interleaved."""
    rng = random.Random(seed)
    systems = [f"System {g}: " + _text(rng, system_prompt_len) for g in range(num_groups)]
    out = []
    for i in range(prompts_per_group):
        for g in range(num_groups):
            question = f"\nQuestion {i}: " + _text(rng, question_len)
            out.append(BenchRequest(systems[g] + question, system_prompt_len + question_len + 6, output_len))
    return out
