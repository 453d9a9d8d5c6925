"""Paged attention with Pagoda's C++ CPU kernels (``pagoda.kernels``).

Same head-major cache layout as the portable backend; the cache write and the attention are one
operator each, reading blocks where they are instead of gathering them into a copy first.

Batch-invariant: every query token, decode or prefill, is one row of the same kernel, reduced
over its own causal context in one fixed order (scores key by key, a float32 softmax over the
whole row, then values key by key), whatever the other rows of the step, the chunk boundaries of
its prompt or whether its prefix came from the cache. A prefill then costs O(prompt^2) per head
in that kernel instead of a flash-style SDPA (measured in the README). Tensors on other devices
take the portable path.
"""

from __future__ import annotations

import torch

from pagoda.attention import quantized_kv
from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_backend import TorchAttentionBackend


class CpuAttentionBackend(TorchAttentionBackend):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        if not q.is_cpu:
            return super().forward(q, k, v, k_cache, v_cache, metadata)
        if quantized_kv.is_quantized(k_cache):
            if not self._quantized_kernel_fits():
                return super().forward(q, k, v, k_cache, v_cache, metadata)
            torch.ops.pagoda.write_kv_cache_quantized_(k, v, k_cache, v_cache, metadata.slot_mapping)
            attend = torch.ops.pagoda.paged_attention_rows_quantized
        else:
            torch.ops.pagoda.write_kv_cache_(k, v, k_cache, v_cache, metadata.slot_mapping)
            attend = torch.ops.pagoda.paged_attention_rows
        out = torch.empty_like(q)
        if metadata.num_decodes == metadata.num_seqs:  # one token per sequence: the rows are the sequences
            attend(out, q, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, None, self.scale)
        else:
            table_of, lens = metadata.query_rows
            attend(out, q, k_cache, v_cache, metadata.block_tables, lens, table_of, self.scale)
        return out

    def _quantized_kernel_fits(self) -> bool:
        d, group = self.head_dim, self.num_heads // self.num_kv_heads
        return d % 16 == 0 and (d <= 96 or d == 128) and group <= 16
