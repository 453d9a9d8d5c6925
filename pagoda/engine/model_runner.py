"""Runs one scheduled step: flat inputs -> model over the paged KV cache -> sampled tokens."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import torch

from pagoda.attention import quantized_kv
from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import CacheConfig, ModelConfig
from pagoda.device import to_device
from pagoda.distributed.parallel_stats import ParallelStats
from pagoda.engine.decode_graphs import DecodeGraphs
from pagoda.engine.guarded_processors import guarded_processors
from pagoda.engine.request import Request
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.engine.step_inputs import flat_inputs
from pagoda.lora.manager import LoRAManager, LoRAStep
from pagoda.lora.request import LoRARequest
from pagoda.outputs import PositionLogprobs
from pagoda.sample.prompt_logprobs import position_logprobs
from pagoda.sample.sampler import RowLogprobs, Sampler, SamplingBatch
from pagoda.sampling_params import SamplingParams
from pagoda.spec.verification import num_accepted

if TYPE_CHECKING:
    from pagoda.spec.draft_proposer import DraftProposer


@dataclass
class ModelRunnerOutput:
    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, RowLogprobs] = field(default_factory=dict)
    # prompt logprobs computed this step, for prompt positions in order (first prompt token excluded)
    prompt_logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)
    # requests whose own code (a logits processor) raised: they fail, the others go on
    failed: dict[str, str] = field(default_factory=dict)
    # pooling requests: (sum of this step's prompt rows' final hidden states, number of rows); for
    # "last" pooling only the last prompt row, once it is computed
    pooled: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    # speculated requests: the proposed tokens the model kept (they come before ``sampled``), and
    # their logprobs when asked for
    spec_accepted: dict[str, list[int]] = field(default_factory=dict)
    spec_logprobs: dict[str, list[RowLogprobs]] = field(default_factory=dict)


@dataclass
class StepInputs:
    """The flat tensors of one step (what every tensor-parallel rank needs), plus the driver's
    view of which request each row belongs to."""

    scheduled: list[ScheduledRequest]
    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    block_copies: list[tuple[int, int]]
    lora: LoRAStep | None = None  # the rows' adapter slots (None: no adapter this step)


class StepModel(Protocol):
    """What the runner calls on its model: the forward over a flat batch (hidden states; None from a
    pipeline stage that sends them on to the next), and the LM head. ``attention_backend`` is the
    backend its attention layers run (resolved once by the model loader); the runner lays out the
    KV cache for it."""

    attention_backend: type[AttentionBackend]

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor,
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]], metadata: AttentionMetadata
                 ) -> torch.Tensor | None: ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


def kv_cache_bytes_per_block(config: ModelConfig, block_size: int, kv_cache_dtype: str = "auto") -> int:
    row = quantized_kv.bytes_per_token_head(kv_cache_dtype, config.dtype, config.head_dim)
    return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * row


@dataclass
class StepHandle:
    """A submitted step: its inputs and the model's hidden states, sampled on ``complete``."""

    inputs: StepInputs
    hidden: torch.Tensor


class ModelRunner:
    """The ``Runner`` of one process. Owns the model and the KV cache tensors: one pair per layer,
    of ``num_blocks`` blocks plus a scratch block (``KVCacheManager.scratch_block``) that dummy
    rows write to. ``sampler`` is None on a worker rank, which only runs ``forward``."""

    num_virtual_engines = 1
    alive = True

    def __init__(self, model: StepModel, model_config: ModelConfig, cache_config: CacheConfig,
                 sampler: Sampler | None, device: torch.device) -> None:
        self.model = model
        self.config = model_config
        self.block_size = cache_config.block_size
        self.sampler = sampler
        self.device = device
        self.attention = model.attention_backend  # resolved once, by the model loader
        self.scratch_block = cache_config.num_blocks  # never handed out by the block pool
        if cache_config.kv_cache_dtype != "auto" and not getattr(self.attention, "reads_quantized_kv", False):
            raise ValueError(f"kv_cache_dtype={cache_config.kv_cache_dtype!r} needs an attention backend that reads "
                             f"quantized blocks ('cpu' or 'torch'), not {self.attention.__name__}")
        dtype, row = quantized_kv.cache_storage(cache_config.kv_cache_dtype, model_config.dtype, model_config.head_dim)
        shape = self.attention.kv_cache_shape(cache_config.num_blocks + 1, cache_config.block_size,
                                              model_config.num_key_value_heads, row)
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=device),
                           torch.zeros(shape, dtype=dtype, device=device))
                          for _ in range(model_config.num_hidden_layers)]

    decode_graphs: DecodeGraphs | None = None
    lora: LoRAManager | None = None  # set by the engine factory when LoRA is enabled
    drafter: DraftProposer | None = None  # set by the engine factory for draft-model speculation

    def add_lora(self, request: LoRARequest) -> None:
        """Reads and checks an adapter into host memory (``LoRALoadError`` when it cannot run)."""
        if self.lora is None:
            raise ValueError("LoRA is not enabled on this engine (enable_lora=True)")
        self.lora.add(request)

    def remove_lora(self, lora_id: int) -> None:
        if self.lora is not None:
            self.lora.remove(lora_id)

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
        return self.complete(self.submit(out))

    @torch.inference_mode()
    def submit(self, out: SchedulerOutput) -> StepHandle:
        if not self.kv_caches:
            raise RuntimeError("the model runner has been shut down")
        if self.drafter is not None:  # the proposals the scheduler asked the draft model for
            self.drafter.propose(out)
        inputs = self.prepare(out)
        hidden = self.forward(inputs)
        assert hidden is not None, "one process runs every layer"
        return StepHandle(inputs, hidden)

    @torch.inference_mode()
    def complete(self, handle: StepHandle) -> ModelRunnerOutput:
        return self.sample(handle.inputs, handle.hidden)

    def stats(self) -> ParallelStats | None:
        return None  # one process: no per-rank seconds

    def shutdown(self) -> None:
        """Frees the KV cache (the model goes with the runner)."""
        self.kv_caches = []
        if self.drafter is not None:
            self.drafter.shutdown()

    def prepare(self, out: SchedulerOutput) -> StepInputs:
        # decodes (one new token) first: attention runs them together
        scheduled = sorted(out.scheduled, key=lambda s: s.num_new_tokens != 1)
        input_ids, positions, metadata = self._prepare_inputs(scheduled)
        lora = None if self.lora is None else self.lora.plan(
            [s.request.lora_request for s in scheduled], [s.num_new_tokens for s in scheduled])
        return StepInputs(scheduled, input_ids, positions, metadata, out.block_copies, lora)

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor | None:
        """Block copies, then the model over the flat batch; returns hidden states [tokens, hidden]."""
        self._copy_blocks(inputs.block_copies)
        if self.lora is not None:
            self.lora.activate(inputs.lora, self.device)
        if self.decode_graphs is not None and self.decode_graphs.can_run(inputs.metadata):
            return self.decode_graphs.run(inputs.input_ids, inputs.positions, inputs.metadata)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.metadata)

    @torch.inference_mode()
    def sample(self, inputs: StepInputs, hidden: torch.Tensor) -> ModelRunnerOutput:
        assert self.sampler is not None, "a worker rank does not sample"
        scheduled, starts = inputs.scheduled, inputs.metadata.query_start_loc_list
        result = ModelRunnerOutput()
        pool_rows = [i for i, s in enumerate(scheduled) if s.request.params.pooling is not None]
        if pool_rows:
            self._pool(scheduled, pool_rows, hidden, starts, result)
        sample_rows = [i for i, s in enumerate(scheduled) if s.sample and s.request.params.pooling is None]
        prompt_rows = [i for i, s in enumerate(scheduled) if self._wants_prompt_logprobs(s)]
        if prompt_rows:
            self._prompt_logprobs(scheduled, prompt_rows, hidden, starts, result)
        if not sample_rows:
            return result
        # one row per position to sample: a speculated request's last known token and its proposal
        rows = [p for i in sample_rows for p in range(starts[i + 1] - 1 - len(scheduled[i].spec_token_ids),
                                                        starts[i + 1])]
        logits = self.model.compute_logits(hidden[to_device(rows, torch.int64, self.device)])
        batch = SamplingBatch([], [], [], [])
        for i in sample_rows:
            s = scheduled[i]
            r = s.request
            params = self._guarded(r, result.failed) if r.params.logits_processors else r.params
            for j in range(len(s.spec_token_ids) + 1):  # row j: as if the first j proposals were kept
                batch.params.append(params)
                batch.prompt_token_ids.append(r.prompt_token_ids)
                batch.output_token_ids.append(r.output_token_ids + s.spec_token_ids[:j] if j else r.output_token_ids)
                batch.generators.append(_positioned_generator(r, j))
        sampled = self.sampler(logits, batch)
        row = 0
        for i in sample_rows:
            s = scheduled[i]
            r, k = s.request, len(s.spec_token_ids)
            tokens, lps = sampled.token_ids[row:row + k + 1], sampled.logprobs[row:row + k + 1]
            row += k + 1
            if r.request_id in result.failed:
                continue
            m = num_accepted(s.spec_token_ids, tokens, r.stop_token_ids) if k else 0
            result.sampled[r.request_id] = tokens[m]
            if k:
                result.spec_accepted[r.request_id] = tokens[:m]
            lp = lps[m]
            if lp is not None:
                result.logprobs[r.request_id] = lp
                if k:
                    result.spec_logprobs[r.request_id] = [x for x in lps[:m] if x is not None]
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

    def _prepare_inputs(self, scheduled: list[ScheduledRequest]
                        ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        return flat_inputs(scheduled, self.block_size, self.device)

    @staticmethod
    def _pool(scheduled: list[ScheduledRequest], rows: list[int], hidden: torch.Tensor, starts: list[int],
              result: ModelRunnerOutput) -> None:
        for i in rows:
            s = scheduled[i]
            r = s.request
            last = min(s.start + s.num_new_tokens, r.num_prompt_tokens)  # prompt positions of this chunk
            h = hidden[starts[i]: starts[i] + (last - s.start)].float()
            if r.params.pooling == "mean":
                result.pooled[r.request_id] = (h.sum(0), h.shape[0])
            elif last == r.num_prompt_tokens and h.shape[0]:
                result.pooled[r.request_id] = (h[-1].clone(), 1)

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
            top = r.params.prompt_logprobs
            assert top is not None  # _wants_prompt_logprobs
            result.prompt_logprobs[r.request_id] = position_logprobs(logits, targets, top)


def _positioned_generator(request: Request, ahead: int = 0) -> torch.Generator | None:
    """A seeded request's draw for output position k depends only on (seed, k): the same whether it
    runs alone or batched, after a preemption, after grammar-forced tokens skipped draws, or in a
    speculated step (``ahead``: the row for ``ahead`` positions past the next one, a generator of
    its own)."""
    if request.generator is None or request.seed is None:
        return None
    generator = request.generator if ahead == 0 else torch.Generator(device=request.generator.device)
    return generator.manual_seed((request.seed * 1_000_003 + request.num_output_tokens + ahead) % (1 << 63))
