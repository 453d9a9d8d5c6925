"""Configuration resolved once at the entry point into frozen dataclasses.

Each component receives only the part it needs: the model its ModelConfig, the KV cache
its CacheConfig, the scheduler its SchedulerConfig.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pagoda.engine.args import EngineArgs


@dataclass(frozen=True)
class RopeScaling:
    """llama3-style RoPE frequency scaling (None of these for plain RoPE)."""

    rope_type: str = "default"  # "default" | "llama3" | "linear"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-family decoder plus how to run it."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # Qwen2 has biases on q/k/v
    dtype: torch.dtype
    max_model_len: int
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    attention_backend: str = EngineArgs.attention_backend  # how to run it: resolved by the model loader
    deterministic: bool = EngineArgs.deterministic  # batch-invariant kernels for every row (gguf_int4.py)
    weights_memory: str = EngineArgs.weights_memory  # "packed": no dequantized copy beside packed weights

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], dtype: torch.dtype, max_model_len: int | None) -> ModelConfig:
        """Builds the config from a Hugging Face config.json dict (GGUF metadata is converted to one)."""
        arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        # transformers 5 writes "rope_parameters" (theta included); older configs "rope_scaling"
        rope_params = cfg.get("rope_parameters") or {}
        rs = cfg.get("rope_scaling") or rope_params
        rope_scaling = None
        rope_type = rs.get("rope_type", rs.get("type", "default")) if rs else "default"
        if rope_type != "default":
            if rope_type not in ("llama3", "linear"):
                raise ValueError(f"unsupported rope_scaling type {rope_type!r}")
            rope_scaling = RopeScaling(
                rope_type=rope_type,
                factor=float(rs.get("factor", 1.0)),
                low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
                high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
                original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 8192)),
            )
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        return cls(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(heads),
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
            rope_scaling=rope_scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", arch.startswith("Qwen2"))),
            dtype=dtype,
            max_model_len=min(max_model_len or max_pos, max_pos),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
        )


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: ``num_blocks`` blocks of ``block_size`` tokens each (resolved from
    ``num_kv_blocks`` or the ``kv_cache_memory_gb`` budget)."""

    block_size: int
    num_blocks: int
    enable_prefix_caching: bool = EngineArgs.enable_prefix_caching
    # under the default numerics a generated token's KV comes from another kernel than a prompt
    # token's (pagoda.layers.row_roles): only prompt tokens enter the prefix cache unless deterministic
    deterministic: bool = EngineArgs.deterministic
    kv_cache_dtype: str = EngineArgs.kv_cache_dtype  # "int8" / "fp8": see pagoda.attention.quantized_kv


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one engine step and the batching policy; options keep their ``EngineArgs`` names
    and defaults.

    ``batching``: "continuous" (iteration-level) or "static" (a batch is admitted together
    and nothing joins until all of it has finished; the honest baseline).
    """

    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    batching: str = EngineArgs.batching
    enable_chunked_prefill: bool = EngineArgs.enable_chunked_prefill
    scheduling_policy: str = EngineArgs.scheduling_policy
    max_wait_s: float = EngineArgs.max_wait_s  # past this wait a request is admitted first, whatever the policy
    # a request preempted more often than this is resumed only once blocks for its whole remaining run are
    # free (no thrash: it would otherwise be preempted again as soon as the others grow)
    max_preemptions: int = EngineArgs.max_preemptions
    max_loras: int = EngineArgs.max_loras  # with LoRA: the most distinct adapters among running requests (the slots)
