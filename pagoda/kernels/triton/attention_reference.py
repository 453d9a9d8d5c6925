"""The torch reference for the paged attention kernels: each sequence's K/V gathered from its block
table, then plain causal softmax attention in float32."""

from __future__ import annotations

import torch


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              block_tables: torch.Tensor, query_start_loc: list[int], seq_lens: list[int],
                              scale: float) -> torch.Tensor:
    """q: [T, Hq, D] flat new queries, sequence i's rows ``query_start_loc[i]:query_start_loc[i+1]`` being the
    last of its ``seq_lens[i]`` context tokens; caches [Hkv, num_blocks, block_size, D]. Returns float32
    [T, Hq, D]."""
    hkv, _, block_size, d = k_cache.shape
    group = q.shape[1] // hkv
    out = torch.empty(q.shape, dtype=torch.float32)
    for i, seq_len in enumerate(seq_lens):
        s, e = query_start_loc[i], query_start_loc[i + 1]
        blocks = block_tables[i, : -(-seq_len // block_size)].cpu()
        keys = k_cache.cpu()[:, blocks].reshape(hkv, -1, d)[:, :seq_len].float()  # [Hkv, L, D]
        values = v_cache.cpu()[:, blocks].reshape(hkv, -1, d)[:, :seq_len].float()
        keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)  # [Hq, L, D]
        qi = q[s:e].cpu().float().transpose(0, 1)  # [Hq, n, D]
        scores = torch.matmul(qi, keys.transpose(1, 2)) * scale
        pos = torch.arange(seq_len - (e - s), seq_len).unsqueeze(1)
        scores.masked_fill_(torch.arange(seq_len).unsqueeze(0) > pos, float("-inf"))
        out[s:e] = torch.matmul(torch.softmax(scores, dim=-1), values).transpose(0, 1)
    return out
