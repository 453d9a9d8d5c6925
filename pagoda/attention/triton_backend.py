"""Paged attention with Pagoda's Triton kernels (``pagoda.kernels.triton``), for CUDA devices.

The cache layout is the portable backend's, [Hkv, num_blocks, block_size, D], so block copies and the
reference agree; the cache write, the decode attention (split-K, GQA-grouped) and the prefill attention
(varlen, causal, reading cached prefix blocks in place) are one kernel launch each per layer, with no
per-sequence Python loop and no host synchronisation. On CPU tensors it needs Triton's interpreter
(``TRITON_INTERPRET=1``), which the tests use.

Batch-invariant: each kernel's reduction order depends only on the sequence's own length. A token
computed in a decode step and the same token computed as a one-row prefill chunk take different
kernels (the runner routes every one-token row to decode), as on the CPU backends.
"""

from __future__ import annotations

import torch

from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.kernels.triton.decode_attention import paged_decode_attention
from pagoda.kernels.triton.kv_cache_write import write_kv_cache
from pagoda.kernels.triton.prefill_attention import paged_prefill_attention


class TritonAttentionBackend(AttentionBackend):
    # a CUDA graph replays fixed grids: the runner sets this to the model's maximum length while capturing
    # decode, so the split grid does not follow the step's longest sequence
    decode_split_bound: int | None = None

    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        return (num_kv_heads, num_blocks, block_size, head_dim)

    @staticmethod
    def copy_blocks(kv_caches: list[tuple[torch.Tensor, torch.Tensor]], src: torch.Tensor, dst: torch.Tensor) -> None:
        for k_cache, v_cache in kv_caches:
            k_cache[:, dst] = k_cache[:, src]
            v_cache[:, dst] = v_cache[:, src]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        write_kv_cache(k, v, k_cache, v_cache, metadata.slot_mapping)
        out = torch.empty_like(q)
        nd = metadata.num_decodes
        if nd:
            bound = self.decode_split_bound or max(metadata.seq_lens_list[:nd])
            paged_decode_attention(out[:nd], q[:nd], k_cache, v_cache, metadata.block_tables[:nd],
                                   metadata.seq_lens[:nd], self.scale, bound)
        if nd < metadata.num_seqs:
            starts = metadata.query_start_loc_list
            first = starts[nd]
            max_query_len = max(e - s for s, e in zip(starts[nd:], starts[nd + 1:]))
            paged_prefill_attention(out[first:], q[first:], k_cache, v_cache, metadata.block_tables[nd:],
                                    metadata.query_start_loc[nd:] - first, metadata.seq_lens[nd:], self.scale,
                                    max_query_len)
        return out
