"""Portable PyTorch paged attention (any device).

Decode sequences (one query each) run together as two batched matmuls over query groups with a
float32 softmax: torch's CPU SDPA is several times slower for single-token queries. Prefill
sequences run one by one through SDPA, which is flash-style on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.attention.backend import AttentionBackend, register_backend
from pagoda.attention.metadata import AttentionMetadata


@register_backend("torch")
class TorchAttentionBackend(AttentionBackend):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        hkv, d = self.num_kv_heads, self.head_dim
        k_cache.view(-1, hkv, d).index_copy_(0, metadata.slot_mapping, k)
        v_cache.view(-1, hkv, d).index_copy_(0, metadata.slot_mapping, v)

        out = torch.empty_like(q)
        nd = metadata.num_decodes
        if nd:
            out[:nd] = self._decode(q[:nd], k_cache, v_cache, metadata.block_tables[:nd],
                                    metadata.seq_lens[:nd], max(metadata.seq_lens_list[:nd]))
        starts = metadata.query_start_loc_list
        for i in range(nd, metadata.num_seqs):
            s, e = starts[i], starts[i + 1]
            out[s:e] = self._prefill(q[s:e], k[s:e], v[s:e], k_cache, v_cache, metadata.block_tables[i],
                                     metadata.seq_lens_list[i])
        return out

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_tables: torch.Tensor, seq_lens: torch.Tensor, max_len: int) -> torch.Tensor:
        num_seqs, block_size = q.shape[0], k_cache.shape[1]
        hkv, d = self.num_kv_heads, self.head_dim
        group = self.num_heads // hkv
        num_blocks = -(-max_len // block_size)
        tables = block_tables[:, :num_blocks]
        # [S, L, Hkv, D] -> [S, Hkv, L, D]
        keys = k_cache[tables].view(num_seqs, -1, hkv, d).transpose(1, 2)
        values = v_cache[tables].view(num_seqs, -1, hkv, d).transpose(1, 2)
        qg = q.view(num_seqs, hkv, group, d)
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * self.scale  # [S, Hkv, G, L]
        length = keys.shape[2]
        pad = torch.arange(length, device=q.device).unsqueeze(0) >= seq_lens.unsqueeze(1)  # [S, L]
        scores.masked_fill_(pad[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        return torch.matmul(probs, values).reshape(num_seqs, self.num_heads, d)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
        q_len = q.shape[0]
        hkv, d = self.num_kv_heads, self.head_dim
        if q_len == seq_len:  # nothing cached before this chunk: the new K/V are the whole context
            keys, values = k, v
        else:
            block_size = k_cache.shape[1]
            blocks = block_table[: -(-seq_len // block_size)]
            keys = k_cache[blocks].view(-1, hkv, d)[:seq_len]
            values = v_cache[blocks].view(-1, hkv, d)[:seq_len]
        qt, kt, vt = q.transpose(0, 1).unsqueeze(0), keys.transpose(0, 1).unsqueeze(0), values.transpose(0, 1).unsqueeze(0)
        if q_len == seq_len:
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            # queries are the last q_len positions: query i sees keys up to seq_len - q_len + i
            rows = torch.arange(q_len, device=q.device).unsqueeze(1) + (seq_len - q_len)
            mask = torch.arange(seq_len, device=q.device).unsqueeze(0) <= rows
            o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=self.scale, enable_gqa=True)
        return o.squeeze(0).transpose(0, 1)
