"""Builds an ``LLMEngine`` from ``EngineArgs``: model files, configs, KV cache size, and the runner
(one process, or the multi-process executor for tensor / pipeline parallel layouts)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch

from pagoda.config import CacheConfig, ModelConfig, SchedulerConfig
from pagoda.device import resolve_device
from pagoda.engine.args import EngineArgs
from pagoda.engine.model_runner import ModelRunner, StepModel, kv_cache_bytes_per_block
from pagoda.engine.runner import Runner
from pagoda.sample.sampler import Sampler
from pagoda.weights.model_loader import ModelFiles, load_model, resolve_dtype, resolve_quantization

if TYPE_CHECKING:
    from pagoda.engine.llm_engine import LLMEngine
    from pagoda.lora.config import LoRAConfig
    from pagoda.spec.config import SpeculativeConfig
    from pagoda.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def build_engine(args: EngineArgs) -> LLMEngine:
    from pagoda.engine.llm_engine import LLMEngine

    if args.data_parallel_size > 1:
        raise ValueError("data_parallel_size > 1 runs replicas behind a router: use `pagoda serve --dp N`; "
                         "one engine is one replica")
    if args.enable_lora and args.pipeline_parallel_size > 1:
        # a stage holds some layers only; its adapter shards would have to be cut the same way
        raise ValueError("enable_lora with pipeline parallelism is not implemented (tensor parallelism is)")
    speculative_config = args.resolved_speculative_config()
    if speculative_config is not None and speculative_config.method == "draft_model":
        _check_draft_layout(args)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)
    if args.tensor_parallel_size * args.pipeline_parallel_size > 1 and device.type == "cuda":
        raise ValueError("tensor / pipeline parallelism runs on CPU ranks only (gloo / shared memory); "
                         "multi-GPU over NCCL is not implemented: use device='cpu' or one GPU")
    start = time.perf_counter()
    files = ModelFiles(_model_path(args))
    dtype = resolve_dtype(args.dtype, device)
    model_config = replace(ModelConfig.from_hf_config(files.hf_config(), dtype, args.max_model_len),
                           attention_backend=args.attention_backend, deterministic=args.deterministic,
                           weights_memory=args.weights_memory)
    tokenizer = files.tokenizer(args.tokenizer)
    cache_config = _cache_config(args, model_config)
    if model_config.max_model_len > cache_config.num_blocks * args.block_size:
        # a lone request must always fit, or it could never finish
        capacity = cache_config.num_blocks * args.block_size
        logger.warning("max_model_len %d exceeds the KV cache (%d tokens); capping it",
                       model_config.max_model_len, capacity)
        model_config = replace(model_config, max_model_len=capacity)
    scheduler_config = SchedulerConfig(
        max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
        max_model_len=model_config.max_model_len, batching=args.batching, scheduling_policy=args.scheduling_policy,
        max_wait_s=args.max_wait_s, enable_chunked_prefill=args.enable_chunked_prefill,
        max_preemptions=args.max_preemptions, max_loras=args.max_loras)
    sampler = Sampler(tokenizer.eos_token_ids, torch.Generator().manual_seed(args.seed))
    runner = _runner(args, files, model_config, cache_config, sampler, device)
    if args.enable_lora and isinstance(runner, ModelRunner):  # a parallel runner's ranks set up their own
        _enable_lora(args, runner, model_config)
    if speculative_config is not None and speculative_config.method == "draft_model":
        _enable_draft(args, speculative_config, runner, files, model_config, cache_config, tokenizer, device)
    if isinstance(runner, ModelRunner) and device.type == "cuda" and not args.enforce_eager and not args.enable_lora:
        runner.enable_decode_graphs(scheduler_config.max_num_seqs, model_config.max_model_len)
    logger.info("loaded %s (%s) in %.1f s; KV cache %d blocks x %d tokens", files.name, dtype,
                time.perf_counter() - start, cache_config.num_blocks, args.block_size)
    return LLMEngine(model_config, cache_config, scheduler_config, runner, tokenizer, files.name,
                     speculative_config, _spec_row_limit(args, files, device))


def _check_draft_layout(args: EngineArgs) -> None:
    """What a draft model does not run with, refused before anything loads."""
    if args.tensor_parallel_size * args.pipeline_parallel_size > 1:
        raise ValueError("speculative_config method 'draft_model' runs in one process: tensor / pipeline "
                         "parallelism with a draft model is not implemented (use method 'ngram')")
    if args.enable_lora:
        raise ValueError("speculative_config method 'draft_model' with enable_lora is not implemented "
                         "(the draft would propose without the request's adapter)")


def _enable_draft(args: EngineArgs, config: SpeculativeConfig, runner: Runner, files: ModelFiles,
                  model_config: ModelConfig, cache_config: CacheConfig, tokenizer: Tokenizer,
                  device: torch.device) -> None:
    from pagoda.spec.draft_model import load_draft
    from pagoda.spec.draft_proposer import DraftProposer

    assert isinstance(runner, ModelRunner)  # _check_draft_layout
    draft, draft_config = load_draft(config, cast(torch.nn.Module, runner.model), model_config, files.path,
                                     tokenizer, device, args.quantization)
    assert runner.sampler is not None
    runner.drafter = DraftProposer(draft, draft_config, cache_config, runner.sampler, device)
    logger.info("draft model: %s, %d layers; %d tokens proposed per step", config.model or files.name,
                draft_config.num_hidden_layers, config.num_speculative_tokens)


def _spec_row_limit(args: EngineArgs, files: ModelFiles, device: torch.device) -> int | None:
    """Under the default numerics a GGUF model's generated rows run torch's int4 kernel while a step
    has at most MAX_INT4_ROWS of them, oneDNN above: proposals must not push a step that plain
    decoding keeps on the int4 kernel past that, or verification would run other numerics."""
    if args.speculative_config is None or args.deterministic:
        return None
    if resolve_quantization(args.quantization, files, device) != "gguf":
        return None
    from pagoda.quantization.gguf_int4 import MAX_INT4_ROWS

    return MAX_INT4_ROWS


def _lora_config(args: EngineArgs) -> LoRAConfig | None:
    from pagoda.lora.config import LoRAConfig

    return LoRAConfig(args.max_loras, args.max_lora_rank, args.max_cpu_loras) if args.enable_lora else None


def _enable_lora(args: EngineArgs, runner: ModelRunner, model_config: ModelConfig) -> None:
    from pagoda.lora.manager import LoRAManager

    config = _lora_config(args)
    assert config is not None
    runner.lora = LoRAManager(cast(torch.nn.Module, runner.model), config, model_config.dtype)


def _model_path(args: EngineArgs) -> str:
    if args.model is not None:
        return args.model
    from pagoda.weights.default_model import default_model_path

    return default_model_path()


def _cache_config(args: EngineArgs, model_config: ModelConfig) -> CacheConfig:
    per_block = kv_cache_bytes_per_block(model_config, args.block_size, args.kv_cache_dtype)
    num_blocks = args.num_kv_blocks or max(1, int(args.kv_cache_memory_gb * 2**30 // per_block))
    return CacheConfig(args.block_size, num_blocks, args.enable_prefix_caching, args.deterministic,
                       args.kv_cache_dtype)


def _runner(args: EngineArgs, files: ModelFiles, model_config: ModelConfig, cache_config: CacheConfig,
            sampler: Sampler, device: torch.device) -> Runner:
    quantization = resolve_quantization(args.quantization, files, device)
    if args.tensor_parallel_size * args.pipeline_parallel_size > 1:  # ranks load their own shards
        from pagoda.distributed.executor import MultiprocExecutor
        from pagoda.distributed.parallel_config import ParallelConfig

        if args.distributed_executor_backend == "ray":  # Ray places the ranks (issue 21)
            from pagoda.distributed.ray_executor import RayExecutor

            return RayExecutor(ParallelConfig.from_engine_args(args), files.path, model_config, cache_config,
                               sampler, quantization, _lora_config(args), ray_address=args.ray_address)
        return MultiprocExecutor(ParallelConfig.from_engine_args(args), files.path, model_config, cache_config, sampler,
                                 quantization, _lora_config(args))
    model = load_model(files, model_config, device, quantization=quantization, show_progress=args.show_progress)
    return ModelRunner(cast(StepModel, model), model_config, cache_config, sampler, device)  # a causal LM
