"""Portable PyTorch paged attention (any device).

The cache is head-major, [Hkv, num_blocks, block_size, D], so that gathering a batch's blocks
gives each head's keys as contiguous [seqs, tokens, D] matrices that the matmuls read without
transposing copies. Decode sequences (one query each) run together as two batched matmuls over
query groups with a float32 softmax: torch's CPU SDPA is several times slower for single-token
queries. Prefill sequences run one by one through SDPA, which is flash-style on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.attention import quantized_kv
from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata


class TorchAttentionBackend(AttentionBackend):
    reads_quantized_kv = True  # int8 / fp8 caches (``quantized_kv``): quantized on write, dequantized on read

    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        return (num_kv_heads, num_blocks, block_size, head_dim)

    @staticmethod
    def copy_blocks(kv_caches: list[tuple[torch.Tensor, torch.Tensor]], src: torch.Tensor, dst: torch.Tensor) -> None:
        for k_cache, v_cache in kv_caches:
            if quantized_kv.is_quantized(k_cache):  # whole rows of codes and scales, as bytes
                k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
            k_cache[:, dst] = k_cache[:, src]
            v_cache[:, dst] = v_cache[:, src]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        self._write_cache(k, v, k_cache, v_cache, metadata.slot_mapping)
        out = torch.empty_like(q)
        nd = metadata.num_decodes
        if nd:
            self._decode(out[:nd], q[:nd], k_cache, v_cache, metadata.block_tables[:nd], metadata.seq_lens[:nd],
                         max(metadata.seq_lens_list[:nd]))
        starts = metadata.query_start_loc_list
        for i in range(nd, metadata.num_seqs):
            s, e = starts[i], starts[i + 1]
            out[s:e] = self._prefill(q[s:e], k[s:e], v[s:e], k_cache, v_cache, metadata.block_tables[i],
                                     metadata.seq_lens_list[i])
        return out

    def _write_cache(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     slot_mapping: torch.Tensor) -> None:
        hkv = self.num_kv_heads
        if quantized_kv.is_quantized(k_cache):  # rows of codes and a scale, copied as bytes
            k, v = (quantized_kv.quantize(t, k_cache.dtype).view(torch.uint8) for t in (k, v))
            k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
        k_cache.view(hkv, -1, k.shape[-1]).index_copy_(1, slot_mapping, k.transpose(0, 1))
        v_cache.view(hkv, -1, v.shape[-1]).index_copy_(1, slot_mapping, v.transpose(0, 1))

    def _decode(self, out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_tables: torch.Tensor, seq_lens: torch.Tensor, max_len: int) -> None:
        """Writes ``out`` [S, Hq, D] for S single-token queries."""
        num_seqs, block_size = q.shape[0], k_cache.shape[2]
        hkv, d = self.num_kv_heads, self.head_dim
        group = self.num_heads // hkv
        blocks = block_tables[:, : -(-max_len // block_size)].reshape(-1)
        keys = _gather(k_cache, blocks, q.dtype).view(hkv, num_seqs, -1, d)  # [Hkv, S, L, D]
        values = _gather(v_cache, blocks, q.dtype).view(hkv, num_seqs, -1, d)
        qg = q.view(num_seqs, hkv, group, d).transpose(0, 1)  # [Hkv, S, G, D]
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float()  # [Hkv, S, G, L]
        pad = torch.arange(keys.shape[2], device=q.device) >= seq_lens.unsqueeze(1)  # [S, L]
        scores.mul_(self.scale).masked_fill_(pad[None, :, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        out.copy_(torch.matmul(probs, values).transpose(0, 1).reshape(num_seqs, self.num_heads, d))

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
        q_len = q.shape[0]
        hkv, d = self.num_kv_heads, self.head_dim
        if q_len == seq_len and not quantized_kv.is_quantized(k_cache):
            # nothing cached before this chunk: the new K/V are the whole context (a quantized cache is read
            # back, so that a prompt sees the same keys whether or not its prefix came from the cache)
            keys, values = k.transpose(0, 1), v.transpose(0, 1)
        else:
            blocks = block_table[: -(-seq_len // k_cache.shape[2])]
            keys = _gather(k_cache, blocks, q.dtype).view(hkv, -1, d)[:, :seq_len]
            values = _gather(v_cache, blocks, q.dtype).view(hkv, -1, d)[:, :seq_len]
        qt = q.transpose(0, 1).unsqueeze(0)
        kt, vt = keys.unsqueeze(0), values.unsqueeze(0)
        if q_len == seq_len:
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            # queries are the last q_len positions: query i sees keys up to seq_len - q_len + i
            rows = torch.arange(q_len, device=q.device).unsqueeze(1) + (seq_len - q_len)
            mask = torch.arange(seq_len, device=q.device).unsqueeze(0) <= rows
            o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=self.scale, enable_gqa=True)
        return o.squeeze(0).transpose(0, 1)


def _gather(cache: torch.Tensor, blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """cache[:, blocks] in ``dtype`` ([Hkv, len(blocks), block_size, D]), dequantized if the cache is."""
    if not quantized_kv.is_quantized(cache):
        return cache.index_select(1, blocks)
    rows = cache.view(torch.uint8).index_select(1, blocks).view(cache.dtype)
    return quantized_kv.dequantize(rows, dtype)
