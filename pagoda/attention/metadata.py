"""What attention needs to know about one flattened batch of tokens."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from pagoda.layers.row_roles import RowRoles


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
    # per sequence, how many of its new tokens are prompt tokens (None: not known, all count as prompt)
    num_prompt_rows_list: list[int] | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_list)

    @functools.cached_property
    def row_roles(self) -> RowRoles | None:
        if self.num_prompt_rows_list is None:
            return None
        return RowRoles(tuple(self.query_start_loc_list), tuple(self.num_prompt_rows_list))

    @functools.cached_property
    def query_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query token: (its sequence's row of ``block_tables``, its causal context length), so
        that every query, decode or prefill, can be attended as a row of its own (built once per
        step, shared by the layers)."""
        table_of: list[int] = []
        lens: list[int] = []
        starts = self.query_start_loc_list
        for i, seq_len in enumerate(self.seq_lens_list):
            q_len = starts[i + 1] - starts[i]
            table_of.extend([i] * q_len)
            lens.extend(range(seq_len - q_len + 1, seq_len + 1))
        device = self.seq_lens.device
        return (torch.tensor(table_of, dtype=torch.int64, device=device),
                torch.tensor(lens, dtype=torch.int64, device=device))
