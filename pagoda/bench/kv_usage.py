"""KV-cache memory of a `pagoda bench throughput` mix run: bytes per token, pool size, peak usage,
and utilisation (slots holding real tokens / slots allocated) of the paged cache next to contiguous
pre-allocation, summed over engine steps, and its printed summary.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KVUsage:
    """Sums over engine steps: utilisation = sum(real tokens) / sum(slots) over the run."""

    bytes_per_token: int
    block_size: int
    num_blocks: int
    max_model_len: int
    peak_usage: float = 0.0  # fraction of the pool's blocks held by running requests
    peak_pool_usage: float = 0.0  # the engine's gauge: prefix-cached blocks kept for reuse included
    peak_running: int = 0
    real_token_steps: int = 0  # tokens whose K/V is in the cache
    paged_slot_steps: int = 0  # slots of the blocks allocated
    contiguous_slot_steps: int = 0  # max_model_len per running sequence
    reserved_slot_steps: int = 0  # prompt + max_tokens per running sequence
    num_preemptions: int = 0
    prefix_cache_hit_tokens: int = 0  # 0 expected: the mix's prompts share nothing

    def utilisation(self, slot_steps: int) -> float:
        return self.real_token_steps / slot_steps if slot_steps else 0.0


def format_kv(kv: KVUsage) -> str:
    gib = 2**30
    pool_tokens = kv.num_blocks * kv.block_size
    pool_gib = pool_tokens * kv.bytes_per_token / gib
    rows = [
        (f"paged, blocks of {kv.block_size} tokens", kv.utilisation(kv.paged_slot_steps)),
        (f"contiguous, max_model_len ({kv.max_model_len}) per sequence",
         kv.utilisation(kv.contiguous_slot_steps)),
        ("contiguous, prompt + max_tokens per sequence", kv.utilisation(kv.reserved_slot_steps)),
    ]
    lines = [f"KV cache: {kv.bytes_per_token:,} bytes per token; pool {kv.num_blocks} blocks x "
             f"{kv.block_size} = {pool_tokens:,} tokens ({pool_gib:.2f} GiB); "
             f"peak {kv.peak_usage:.1%} of the pool held by running requests ({kv.peak_running} at most; "
             f"{kv.peak_pool_usage:.1%} with prefix-cached blocks); {kv.num_preemptions} preemptions, "
             f"{kv.prefix_cache_hit_tokens} prefix-cache hit tokens",
             f"contiguous max-length pre-allocation for {kv.peak_running} sequences would take "
             f"{kv.peak_running * kv.max_model_len * kv.bytes_per_token / gib:.2f} GiB",
             "| allocation | utilisation (real-token slots / allocated slots, over all steps) |",
             "| --- | --- |"]
    lines += [f"| {name} | {u:.1%} |" for name, u in rows]
    return "\n".join(lines)
