"""A random-weight twin of a model with other attention head counts, for parallel benchmarks.

The default model's 9 query / 3 KV heads divide by 3 but not by 2; its twin with 12 / 4 heads (head
dim 48, so the hidden size, the parameter count and the query-group size stay the same) lets TP = 2
run on the same shapes. Weights are random: throughput and time shares are what it is for, not text.
"""

from __future__ import annotations

import json
import os

import torch


def build_head_twin(base: str, num_heads: int, num_kv_heads: int, out_dir: str, seed: int = 0) -> str:
    """Saves a Llama of ``base``'s shape (an HF directory or a GGUF) with ``num_heads`` query and
    ``num_kv_heads`` KV heads and random bfloat16 weights, plus ``base``'s tokenizer; returns
    ``out_dir``."""
    from safetensors.torch import save_file

    from pagoda.weights.model_loader import ModelFiles

    files = ModelFiles(base)
    config = dict(files.hf_config())
    hidden = config["hidden_size"]
    if hidden % num_heads or num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads must divide the hidden size {hidden} and be a multiple of "
                         f"{num_kv_heads} KV heads")
    head_dim = hidden // num_heads
    config.update(num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
                  torch_dtype="bfloat16")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    inter, layers = config["intermediate_size"], config["num_hidden_layers"]
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (num_heads * head_dim, hidden),
                   p + "self_attn.k_proj.weight": (num_kv_heads * head_dim, hidden),
                   p + "self_attn.v_proj.weight": (num_kv_heads * head_dim, hidden),
                   p + "self_attn.o_proj.weight": (hidden, num_heads * head_dim),
                   p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter),
                   p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02
                      ).to(torch.bfloat16) for name, shape in shapes.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    files.tokenizer().save_pretrained(out_dir)
    return out_dir

