"""A step's rows as the model takes them: flat token ids, positions and attention metadata."""

from __future__ import annotations

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.device import to_device
from pagoda.engine.scheduler_output import ScheduledRequest


def flat_inputs(scheduled: list[ScheduledRequest], block_size: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """The flat input ids, positions and attention metadata of ``scheduled`` (decodes first)."""
    bs = block_size
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    query_start = [0]
    seq_lens: list[int] = []
    num_decodes = 0
    num_prompt_rows: list[int] = []
    for s in scheduled:
        end = s.start + s.num_new_tokens
        num_prompt_rows.append(max(0, min(end, s.request.num_prompt_tokens) - s.start))
        ids.extend(s.token_ids)
        table = s.block_table
        for p in range(s.start, end):
            pos.append(p)
            slots.append(table[p // bs] * bs + p % bs)
        query_start.append(query_start[-1] + s.num_new_tokens)
        seq_lens.append(end)
        num_decodes += s.num_new_tokens == 1
    max_blocks = max(len(s.block_table) for s in scheduled)
    tables = [s.block_table + [0] * (max_blocks - len(s.block_table)) for s in scheduled]
    dev = device
    # built on the host (pinned for a GPU) and copied without blocking: no sync while preparing
    metadata = AttentionMetadata(
        slot_mapping=to_device(slots, torch.int64, dev),
        query_start_loc=to_device(query_start, torch.int64, dev),
        seq_lens=to_device(seq_lens, torch.int64, dev),
        block_tables=to_device(tables, torch.int64, dev),
        num_decodes=num_decodes,
        max_seq_len=max(seq_lens),
        query_start_loc_list=query_start,
        seq_lens_list=seq_lens,
        num_prompt_rows_list=num_prompt_rows,
    )
    return to_device(ids, torch.int64, dev), to_device(pos, torch.int64, dev), metadata
