"""Tiny random-weight models saved in Hugging Face format, with a small trained BPE tokenizer."""

from __future__ import annotations

import os

import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention stores keys and values in fixed-size blocks.",
    "Continuous batching lets new requests join at every step.",
    "def add(a, b):\n    return a + b\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12",
    "Once upon a time there was a small model that generated text token by token.",
    "Hello world! How are you today? I am fine, thank you.",
    "Les modèles de langue générent du texte; 大模型 生成 文本。 😀",
]


def build_tokenizer(out_dir: str, vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                        "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: str, arch: str = "llama", tie: bool = True, rope_scaling: dict | None = None,
                     num_kv_heads: int = 2, seed: int = 0, vocab_size: int = 384, max_positions: int = 512) -> str:
    """Saves a random model (2 layers, hidden 64, 4 query heads) and a tokenizer; returns the directory."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, vocab_size)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
                  tie_word_embeddings=tie, rms_norm_eps=1e-5, initializer_range=0.15,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        config = LlamaConfig(rope_theta=10000.0, rope_scaling=rope_scaling, **common)
    elif arch == "qwen2":
        config = Qwen2Config(rope_theta=10000.0, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if arch == "qwen2":  # biases are zero-initialised; make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
