"""Random paged-cache cases for the attention kernel tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedCase:
    q: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor  # [Hkv, num_blocks, block_size, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks]
    query_start_loc: list[int]
    seq_lens: list[int]

    def tensors(self, device: str) -> dict[str, torch.Tensor]:
        return {"q": self.q.to(device), "k_cache": self.k_cache.to(device), "v_cache": self.v_cache.to(device),
                "block_tables": self.block_tables.to(device),
                "query_start_loc": torch.tensor(self.query_start_loc, device=device),
                "seq_lens": torch.tensor(self.seq_lens, device=device)}


def paged_case(seq_lens: list[int], query_lens: list[int], num_kv_heads: int, group: int, head_dim: int,
               block_size: int, dtype: torch.dtype, seed: int = 0, shared_prefix_blocks: int = 0) -> PagedCase:
    """Sequences scattered over shuffled blocks (block 0 left unused, as the pool reserves none). With
    ``shared_prefix_blocks``, every sequence's first blocks are the same physical blocks (prefix-cache hits)."""
    g = torch.Generator().manual_seed(seed)
    tables: list[list[int]] = []
    needed = sum(-(-n // block_size) for n in seq_lens) + 1
    free = (torch.randperm(needed + 4, generator=g) + 1).tolist()
    shared = [free.pop() for _ in range(shared_prefix_blocks)]
    for n in seq_lens:
        count = -(-n // block_size)
        tables.append(shared[:count] + [free.pop() for _ in range(count - min(count, len(shared)))])
    width = max(len(t) for t in tables) + 1  # padded with 0 like the runner's tables
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int64)
    num_blocks = needed + 6
    k_cache = torch.randn(num_kv_heads, num_blocks, block_size, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_kv_heads, num_blocks, block_size, head_dim, generator=g).to(dtype)
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    q = torch.randn(starts[-1], num_kv_heads * group, head_dim, generator=g).to(dtype)
    return PagedCase(q, k_cache, v_cache, block_tables, starts, list(seq_lens))
