"""Paged attention with Pagoda's C++ CPU kernels (``pagoda.kernels``).

Same head-major cache layout and prefill path as the portable backend; the cache write and the
decode attention are one operator each, reading blocks where they are instead of gathering
them into a copy first (a third of the memory traffic). Tensors on other devices take the
portable path.
"""

from __future__ import annotations

import torch

from pagoda.attention.torch_backend import TorchAttentionBackend


class CpuAttentionBackend(TorchAttentionBackend):
    def _write_cache(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     slot_mapping: torch.Tensor) -> None:
        if not k.is_cpu:
            return super()._write_cache(k, v, k_cache, v_cache, slot_mapping)
        torch.ops.pagoda.write_kv_cache_(k, v, k_cache, v_cache, slot_mapping)

    def _decode(self, out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_tables: torch.Tensor, seq_lens: torch.Tensor, max_len: int) -> None:
        if not q.is_cpu:
            return super()._decode(out, q, k_cache, v_cache, block_tables, seq_lens, max_len)
        torch.ops.pagoda.paged_decode_attention(out, q, k_cache, v_cache, block_tables, seq_lens, self.scale)
