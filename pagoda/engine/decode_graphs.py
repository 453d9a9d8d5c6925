"""CUDA graphs for decode steps: one graph per batch-size bucket, captured at start-up, replayed with the
step's inputs copied into static buffers and padded to the bucket.

A decode step of a small model is bound by kernel launches and Python, not by the GPU: replaying a graph
issues the whole forward as one launch. Only pure decode steps replay (every sequence one new token);
prefill and mixed steps run eagerly. Padding rows write their K/V to the runner's scratch block and are
dropped from the output. The attention backend sizes its grids from the host lists of the metadata, which
the capture fills with the model's maximum length, so a graph serves every context length.

Without capture (``capture=False``, and always on a CPU) ``run`` executes the same padded forward eagerly:
the tests check the padding on the CPU that way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from pagoda.attention.metadata import AttentionMetadata

# the runner's StepModel, called as one: (input_ids, positions, kv_caches, metadata) -> hidden states
StepForward = Callable[[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], AttentionMetadata],
                       torch.Tensor | None]

logger = logging.getLogger(__name__)


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16, up to and including ``max_num_seqs``."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


class DecodeGraphs:
    def __init__(self, model: StepForward, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], max_num_seqs: int,
                 max_model_len: int, block_size: int, scratch_block: int, device: torch.device) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.buckets = batch_buckets(max_num_seqs)
        self.max_model_len = max_model_len
        self.scratch_block = scratch_block
        self.scratch_slot = scratch_block * block_size
        n, width = max_num_seqs, -(-max_model_len // block_size)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.zeros(n, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(n, width, dtype=torch.int64, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def bucket_for(self, num_seqs: int) -> int | None:
        return next((b for b in self.buckets if b >= num_seqs), None)

    def can_run(self, metadata: AttentionMetadata) -> bool:
        n = metadata.num_seqs
        return (n > 0 and metadata.num_decodes == n and len(metadata.query_start_loc_list) == n + 1
                and metadata.query_start_loc_list[-1] == n and self.bucket_for(n) is not None
                and metadata.block_tables.shape[1] <= self.block_tables.shape[1])

    def _metadata(self, bucket: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bucket], query_start_loc=self.query_start_loc[: bucket + 1],
            seq_lens=self.seq_lens[:bucket], block_tables=self.block_tables[:bucket], num_decodes=bucket,
            max_seq_len=self.max_model_len, query_start_loc_list=list(range(bucket + 1)),
            seq_lens_list=[self.max_model_len] * bucket)

    def _forward(self, bucket: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:bucket], self.positions[:bucket], self.kv_caches, self._metadata(bucket))
        assert hidden is not None, "one process runs every layer"
        return hidden

    def _fill(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata,
              bucket: int) -> None:
        n, width = metadata.num_seqs, metadata.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(metadata.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(metadata.seq_lens, non_blocking=True)
        self.block_tables[:n, :width].copy_(metadata.block_tables, non_blocking=True)
        # padding rows: one token at position 0 of the scratch block
        self.input_ids[n:bucket] = 0
        self.positions[n:bucket] = 0
        self.slot_mapping[n:bucket] = self.scratch_slot
        self.seq_lens[n:bucket] = 1
        self.block_tables[n:bucket, 0] = self.scratch_block

    @torch.inference_mode()
    def capture(self, show_progress: bool = True) -> None:
        """Captures every bucket's graph, largest first (they share one memory pool)."""
        self.seq_lens.fill_(1)
        self.block_tables.fill_(self.scratch_block)
        self.slot_mapping.fill_(self.scratch_slot)
        pool = torch.cuda.graph_pool_handle()
        if show_progress:
            logger.info("capturing CUDA graphs for decode batch sizes %s", self.buckets)
        for bucket in reversed(self.buckets):
            self._forward(bucket)  # compiles the kernels and sizes the allocator outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bucket] = self._forward(bucket)
            self.graphs[bucket] = graph
        torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """Hidden states [num_seqs, hidden] of a decode step (``can_run`` must hold)."""
        n = metadata.num_seqs
        bucket = self.bucket_for(n)
        assert bucket is not None
        self._fill(input_ids, positions, metadata, bucket)
        if bucket in self.graphs:
            self.graphs[bucket].replay()
            return self.outputs[bucket][:n]
        return self._forward(bucket)[:n]
