"""What attention needs to know about one flattened batch of tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Describes a step's flattened tokens: the first ``num_decodes`` sequences have exactly one
    new token each (decode), the rest any number (prefill or a prefill chunk).

    Sequence ``i``'s new tokens are ``query_start_loc[i]:query_start_loc[i+1]`` of the flat batch;
    they are the last ``query_len`` of its ``seq_lens[i]`` context tokens. ``block_tables[i]`` lists
    its KV blocks (padded with 0 past the end); ``slot_mapping[t]`` is the cache slot
    (block * block_size + offset) that token ``t``'s K/V is written to.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64
    query_start_loc: torch.Tensor  # [num_seqs + 1] int64
    seq_lens: torch.Tensor  # [num_seqs] int64
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64
    num_decodes: int
    max_seq_len: int
    # python copies, so per-sequence loops don't synchronise on tensor reads
    query_start_loc_list: list[int]
    seq_lens_list: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_list)
