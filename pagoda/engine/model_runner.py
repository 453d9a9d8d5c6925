"""Runs one scheduled step: flat inputs -> model over the paged KV cache -> sampled tokens."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pagoda.attention.backend import get_backend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import CacheConfig, ModelConfig
from pagoda.device import to_device
from pagoda.engine.decode_graphs import DecodeGraphs
from pagoda.engine.guarded_processors import guarded_processors
from pagoda.engine.request import Request
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.outputs import PositionLogprobs
from pagoda.sample.prompt_logprobs import position_logprobs
from pagoda.sample.sampler import RowLogprobs, Sampler, SamplingBatch
from pagoda.sampling_params import SamplingParams


@dataclass
class ModelRunnerOutput:
    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, RowLogprobs] = field(default_factory=dict)
    # prompt logprobs computed this step, for prompt positions in order (first prompt token excluded)
    prompt_logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)
    # requests whose own code (a logits processor) raised: they fail, the others go on
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class StepInputs:
    """The flat tensors of one step (what every tensor-parallel rank needs), plus the driver's
    view of which request each row belongs to."""

    scheduled: list[ScheduledRequest]
    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    block_copies: list[tuple[int, int]]
    num_padding_rows: int = 0  # static batching's discarded rows, the first sequences of the batch


def kv_cache_bytes_per_block(config: ModelConfig, block_size: int) -> int:
    elem = torch.empty(0, dtype=config.dtype).element_size()
    return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim * elem


class ModelRunner:
    """Owns the model and the KV cache tensors: one pair per layer, of ``num_blocks`` blocks plus a
    scratch block that padding rows (static batching) write to."""

    def __init__(self, model: nn.Module, model_config: ModelConfig, cache_config: CacheConfig,
                 sampler: Sampler, device: torch.device, attention_backend: str = "auto") -> None:
        self.model = model
        self.config = model_config
        self.block_size = cache_config.block_size
        self.sampler = sampler
        self.device = device
        self.attention = get_backend(attention_backend)
        self.scratch_block = cache_config.num_blocks  # never handed out by the block pool
        shape = self.attention.kv_cache_shape(cache_config.num_blocks + 1, cache_config.block_size,
                                              model_config.num_key_value_heads, model_config.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=model_config.dtype, device=device),
                           torch.zeros(shape, dtype=model_config.dtype, device=device))
                          for _ in range(model_config.num_hidden_layers)]

    decode_graphs: DecodeGraphs | None = None

    def enable_decode_graphs(self, max_num_seqs: int, max_model_len: int, capture: bool = True) -> None:
        """Decode steps replay CUDA graphs (captured now, per batch-size bucket); ``capture=False`` runs
        the same padded path eagerly (CPU tests)."""
        self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, max_num_seqs, max_model_len, self.block_size,
                                          self.scratch_block, self.device)
        if capture:
            self.decode_graphs.capture()

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        """One step on this process: ``prepare`` -> ``forward`` -> ``sample``. A multi-process
        executor runs ``prepare`` and ``sample`` on the driver and ``forward`` on every rank."""
        inputs = self.prepare(out)
        hidden = self.forward(inputs)
        return self.sample(inputs, hidden)

    def prepare(self, out: SchedulerOutput) -> StepInputs:
        # decodes (one new token) first: attention runs them together
        scheduled = sorted(out.scheduled, key=lambda s: s.num_new_tokens != 1)
        input_ids, positions, metadata = self._prepare_inputs(scheduled, out.num_padding_rows)
        return StepInputs(scheduled, input_ids, positions, metadata, out.block_copies, out.num_padding_rows)

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Block copies, then the model over the flat batch; returns hidden states [tokens, hidden]."""
        self._copy_blocks(inputs.block_copies)
        if self.decode_graphs is not None and self.decode_graphs.can_run(inputs.metadata):
            return self.decode_graphs.run(inputs.input_ids, inputs.positions, inputs.metadata)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.metadata)

    @torch.inference_mode()
    def sample(self, inputs: StepInputs, hidden: torch.Tensor) -> ModelRunnerOutput:
        scheduled, metadata, padding = inputs.scheduled, inputs.metadata, inputs.num_padding_rows
        result = ModelRunnerOutput()
        if padding:  # a padded batch runs the LM head on its finished rows too
            self.model.compute_logits(hidden[:padding])
        starts = metadata.query_start_loc_list[padding:]
        sample_rows = [i for i, s in enumerate(scheduled) if s.sample]
        prompt_rows = [i for i, s in enumerate(scheduled) if self._wants_prompt_logprobs(s)]
        if prompt_rows:
            self._prompt_logprobs(scheduled, prompt_rows, hidden, starts, result)
        if not sample_rows:
            return result
        last = to_device([starts[i + 1] - 1 for i in sample_rows], torch.int64, self.device)
        logits = self.model.compute_logits(hidden[last])
        requests = [scheduled[i].request for i in sample_rows]
        batch = SamplingBatch(
            params=[self._guarded(r, result.failed) if r.params.logits_processors else r.params
                    for r in requests],
            prompt_token_ids=[r.prompt_token_ids for r in requests],
            output_token_ids=[r.output_token_ids for r in requests],
            generators=[_positioned_generator(r) for r in requests],
        )
        sampled = self.sampler(logits, batch)
        for r, token, lp in zip(requests, sampled.token_ids, sampled.logprobs, strict=True):
            if r.request_id in result.failed:
                continue
            result.sampled[r.request_id] = token
            if lp is not None:
                result.logprobs[r.request_id] = lp
        return result

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        self.attention.copy_blocks(self.kv_caches, src, dst)

    @staticmethod
    def _guarded(request: Request, failed: dict[str, str]) -> SamplingParams:
        """The request's params with its logits processors wrapped in one, so one that raises
        fails only its own request."""
        guard = guarded_processors(request.request_id, request.params, failed)
        return replace(request.params, logits_processors=[guard])

    def _prepare_inputs(self, scheduled: list[ScheduledRequest], num_padding_rows: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        bs = self.block_size
        # padding rows first: one token each at position 0 of the scratch block
        ids: list[int] = [0] * num_padding_rows
        pos: list[int] = [0] * num_padding_rows
        slots: list[int] = [self.scratch_block * bs] * num_padding_rows
        query_start = list(range(num_padding_rows + 1))
        seq_lens: list[int] = [1] * num_padding_rows
        num_decodes = num_padding_rows
        for s in scheduled:
            end = s.start + s.num_new_tokens
            ids.extend(s.request.all_token_ids[s.start:end])
            table = s.block_table
            for p in range(s.start, end):
                pos.append(p)
                slots.append(table[p // bs] * bs + p % bs)
            query_start.append(query_start[-1] + s.num_new_tokens)
            seq_lens.append(end)
            num_decodes += s.num_new_tokens == 1
        max_blocks = max(len(s.block_table) for s in scheduled)
        tables = ([[self.scratch_block] + [0] * (max_blocks - 1)] * num_padding_rows
                  + [s.block_table + [0] * (max_blocks - len(s.block_table)) for s in scheduled])
        dev = self.device
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
        )
        return to_device(ids, torch.int64, dev), to_device(pos, torch.int64, dev), metadata

    @staticmethod
    def _wants_prompt_logprobs(s: ScheduledRequest) -> bool:
        r = s.request
        # positions p < prompt_len - 1 predict prompt token p + 1; skip what an earlier run already did
        return (r.params.prompt_logprobs is not None
                and len(r.prompt_logprobs) < r.num_prompt_tokens - 1
                and s.start < r.num_prompt_tokens - 1)

    def _prompt_logprobs(self, scheduled: list[ScheduledRequest], rows: list[int], hidden: torch.Tensor,
                         starts: list[int], result: ModelRunnerOutput) -> None:
        for i in rows:
            s = scheduled[i]
            r = s.request
            first = max(s.start, len(r.prompt_logprobs))  # entries so far cover positions 0..len-1
            last = min(s.start + s.num_new_tokens, r.num_prompt_tokens - 1)
            if first >= last:
                continue
            h = hidden[starts[i] + (first - s.start): starts[i] + (last - s.start)]
            logits = self.model.compute_logits(h)
            targets = r.prompt_token_ids[first + 1: last + 1]
            result.prompt_logprobs[r.request_id] = position_logprobs(logits, targets, r.params.prompt_logprobs)


def _positioned_generator(request: Request) -> torch.Generator | None:
    """A seeded request's draw for output position k depends only on (seed, k): the same whether it
    runs alone or batched, after a preemption, or after grammar-forced tokens skipped draws."""
    if request.generator is None:
        return None
    return request.generator.manual_seed((request.seed * 1_000_003 + request.num_output_tokens) % (1 << 63))
