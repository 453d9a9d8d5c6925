"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM) over a paged KV cache.

Reads like Hugging Face's ``modeling_llama.py``; the differences are the fused QKV and
gate/up projections (loaded through each parameter's ``weight_loader``) and attention over
block tables for a flat batch of tokens from many requests.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import ModelConfig
from pagoda.layers import row_roles
from pagoda.layers.activation import SiluAndMul
from pagoda.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagoda.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagoda.layers.norm import FinalRMSNorm, RMSNorm
from pagoda.layers.rotary import RopeStep, RotaryEmbedding
from pagoda.parallel import SINGLE, TensorParallel
from pagoda.weights.quantized_tensor import QuantizedTensor

KVCache = tuple[torch.Tensor, torch.Tensor]


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, attention_backend: type[AttentionBackend], tp: TensorParallel) -> None:
        super().__init__()
        d = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, d, config.num_attention_heads,
                                          config.num_key_value_heads, bias=config.attention_bias, tp=tp)
        self.num_heads, self.num_kv_heads, self.head_dim = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, d
        self.o_proj = RowParallelLinear(config.num_attention_heads * d, config.hidden_size, bias=False, tp=tp)
        self.attn = attention_backend(self.num_heads, self.num_kv_heads, d, d ** -0.5)

    def forward(self, rope: RopeStep, x: torch.Tensor, kv_cache: KVCache,
                metadata: AttentionMetadata) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        q, k = RotaryEmbedding.rotate(q, k, rope)
        o = self.attn.forward(q, k, v, kv_cache[0], kv_cache[1], metadata)
        return self.o_proj(o.reshape(t, q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, bias=False, tp=tp)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=False, tp=tp)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention_backend: type[AttentionBackend], tp: TensorParallel) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, attention_backend, tp)
        self.mlp = LlamaMLP(config, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, rope: RopeStep, x: torch.Tensor, residual: torch.Tensor | None,
                kv_cache: KVCache, metadata: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(rope, h, kv_cache, metadata)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, attention_backend: type[AttentionBackend], tp: TensorParallel) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.rotary = RotaryEmbedding(config.head_dim, config.max_model_len, config.rope_theta, config.rope_scaling)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, attention_backend, tp)
                                    for _ in range(config.num_hidden_layers))
        self.norm = FinalRMSNorm(config.hidden_size, config.rms_norm_eps)  # float32 out, for the LM head

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                metadata: AttentionMetadata, num_layers: int | None = None) -> torch.Tensor:
        """``num_layers``: run only the first that many decoder layers (an early-exit draft), then the
        final norm; ``kv_caches`` holds one pair per layer run."""
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        with row_roles.active(metadata.row_roles):
            x = self.embed_tokens(input_ids)
            rope = self.rotary.step(positions, x.dtype)
            residual = None
            for layer, kv_cache in zip(layers, kv_caches, strict=True):
                x, residual = layer(rope, x, residual, kv_cache, metadata)
            x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment -> (fused parameter fragment, shard id)
    stacked_params = [
        ("q_proj", "qkv_proj", "q"), ("k_proj", "qkv_proj", "k"), ("v_proj", "qkv_proj", "v"),
        ("gate_proj", "gate_up_proj", 0), ("up_proj", "gate_up_proj", 1),
    ]

    def __init__(self, config: ModelConfig, attention_backend: type[AttentionBackend],
                 tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.config = config
        self.attention_backend = attention_backend  # resolved once by the loader; the runner sizes its KV cache by it
        self.model = LlamaModel(config, attention_backend, tp)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                metadata: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def _fused_target(self, name: str) -> tuple[str, object]:
        """Checkpoint name -> (parameter name, shard id within a fused parameter or None)."""
        for ckpt_part, param_part, shard_id in self.stacked_params:
            if ckpt_part in name:
                return name.replace(ckpt_part, param_part), shard_id
        return name, None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Loads Hugging Face-named tensors; returns the names of the parameters that were set.

        A tensor may also be a packed quantized one (anything with ``dequantize()``): a module that
        can keep it packed (``load_quantized``) takes it as is, any other gets it dequantized.
        """
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            target, shard_id = self._fused_target(name)
            if isinstance(tensor, QuantizedTensor):
                load_quantized = getattr(modules.get(target.rpartition(".")[0]), "load_quantized", None)
                if load_quantized is not None:  # a packed int4 layer
                    load_quantized(tensor.ggml_type, tensor.data, tensor.shape, shard_id)
                    loaded.add(target)
                    continue
                tensor = tensor.dequantize()
            if target not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no matching parameter")
            param = params[target]
            loader = getattr(param, "weight_loader", _copy_whole)
            loader(param, tensor.to(param.dtype), shard_id)
            loaded.add(target)
        return loaded


def _copy_whole(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
    param.data.copy_(loaded)
