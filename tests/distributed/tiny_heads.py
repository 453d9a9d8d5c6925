"""A tiny random Llama whose head counts divide by 3 (the shared tiny models have 4 heads)."""

from __future__ import annotations

import os

import torch


def build_six_head_model(out_dir: str, num_kv_heads: int = 3, num_layers: int = 2) -> str:
    from tiny_models import build_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, 384)
    config = LlamaConfig(vocab_size=384, hidden_size=48, intermediate_size=96, num_hidden_layers=num_layers,
                         num_attention_heads=6, num_key_value_heads=num_kv_heads, max_position_embeddings=512,
                         tie_word_embeddings=False, rms_norm_eps=1e-5, initializer_range=0.15, rope_theta=10000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
