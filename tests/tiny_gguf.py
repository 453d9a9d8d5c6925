"""Tiny GGUF files written with `gguf.GGUFWriter`, laid out exactly as llama.cpp's converter does."""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

LAYER_PARTS = {  # HF name suffix -> GGUF part
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
}

# Small, but 256 wide so that K-quants (256-weight super-blocks) fit every matrix.
TINY = dict(vocab=64, hidden=256, inter=512, layers=2, heads=8, kv_heads=2, head_dim=32)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rows -> llama.cpp rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(seed: int = 0, tied: bool = True, qkv_bias: bool = False) -> dict[str, np.ndarray]:
    t = TINY
    rng = np.random.default_rng(seed)
    q, kv = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
    shapes = {"model.embed_tokens.weight": (t["vocab"], t["hidden"])}
    for i in range(t["layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (t["hidden"],), p + "post_attention_layernorm.weight": (t["hidden"],),
                   p + "self_attn.q_proj.weight": (q, t["hidden"]), p + "self_attn.k_proj.weight": (kv, t["hidden"]),
                   p + "self_attn.v_proj.weight": (kv, t["hidden"]), p + "self_attn.o_proj.weight": (t["hidden"], q),
                   p + "mlp.gate_proj.weight": (t["inter"], t["hidden"]),
                   p + "mlp.up_proj.weight": (t["inter"], t["hidden"]),
                   p + "mlp.down_proj.weight": (t["hidden"], t["inter"])}
        if qkv_bias:  # Qwen2
            shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.bias": (kv,)}
    shapes["model.norm.weight"] = (t["hidden"],)
    if not tied:
        shapes["lm_head.weight"] = (t["vocab"], t["hidden"])
    return {name: (rng.standard_normal(shape) * 0.05 + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
            for name, shape in shapes.items()}


def gguf_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        _, _, layer, rest = hf_name.split(".", 3)
        return f"blk.{layer}.{LAYER_PARTS[rest]}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf_name]


# Offsets of the float16 scale fields in a block, for the K-quants gguf cannot quantize (we pack random bits).
_K_QUANT_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def pack(value: np.ndarray, kind: Q, rng: np.random.Generator, k_scale: float | None = 0.01) -> np.ndarray:
    """`value` stored as `kind`: float arrays for F32/F16, uint8 blocks (rows, bytes) otherwise (K-quants: random
    blocks whose float16 super-block scales are below `k_scale`; with `k_scale=None` Q4_K / Q5_K / Q6_K quantize
    `value` with Pagoda's round-to-nearest quantizer)."""
    if kind == Q.F32 or value.ndim == 1:
        return value.astype(np.float32)
    if kind == Q.F16:
        return value.astype(np.float16)
    if k_scale is None and kind in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        from pagoda.quantization.kquant_quantizer import QUANTIZERS

        return QUANTIZERS[kind](value)
    if kind in _K_QUANT_SCALES:
        block, size = gguf.GGML_QUANT_SIZES[kind]
        blocks = rng.integers(0, 256, (value.size // block, size), dtype=np.uint8)
        for offset in _K_QUANT_SCALES[kind]:
            scales = (rng.random(len(blocks)) * k_scale).astype(np.float16)
            blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
        return blocks.reshape(value.shape[0], -1)
    return gguf.quants.quantize(value, kind)


def unpack(packed: np.ndarray, kind: Q, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 weights of `packed`, per gguf's own numpy reference."""
    if packed.dtype != np.uint8:
        return packed.astype(np.float32)
    return gguf.quants.dequantize(packed, kind).reshape(shape).astype(np.float32)


def write_llama(path: str, weights: dict[str, np.ndarray], types: dict[str, Q], *, default_type: Q = Q.F32,
                rope_freqs: np.ndarray | None = None, tokenizer: bool = True, seed: int = 0,
                arch: str = "llama", k_scale: float | None = 0.01) -> dict[str, tuple[Q, np.ndarray, np.ndarray]]:
    """Write `weights` (HF names, float32) as a llama (or qwen2) GGUF; `types` picks a GGML type per name suffix.

    Returns {HF name: (type, packed data in HF row order, float32 weights after the round trip)}.
    """
    t = TINY
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(t["layers"])
    w.add_context_length(2048)
    w.add_embedding_length(t["hidden"])
    w.add_feed_forward_length(t["inter"])
    w.add_head_count(t["heads"])
    w.add_head_count_kv(t["kv_heads"])
    w.add_rope_dimension_count(t["head_dim"])
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(t["vocab"])
    if tokenizer:
        tokens = ["<unk>", "<s>", "</s>"] + [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(t["vocab"] - 3)]
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([3, 3, 3] + [1] * (t["vocab"] - 3))
        w.add_token_merges([])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    stored = {}
    for name, value in weights.items():
        kind = next((q for suffix, q in types.items() if name.endswith(suffix)), default_type)
        kind = Q.F32 if value.ndim == 1 else kind
        packed = pack(value, kind, rng, k_scale)
        stored[name] = (kind, packed, unpack(packed, kind, value.shape))
        # llama.cpp permutes Llama's Q/K rows (not Qwen2's); rows of blocks permute like rows of weights.
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            packed = llama_cpp_permute(packed, t["heads"] if "q_proj" in name else t["kv_heads"])
        if packed.dtype == np.uint8:
            w.add_tensor(gguf_name(name), packed, raw_shape=packed.shape, raw_dtype=kind)
        else:
            w.add_tensor(gguf_name(name), packed)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def write_tokenizer(path: str, *, model: str, tokens: list[str], token_types: list[int],
                    merges: list[str] | None = None, scores: list[float] | None = None, pre: str | None = None,
                    bos: int | None = None, eos: int | None = None, unk: int | None = None, pad: int | None = None,
                    add_bos: bool | None = None, add_space_prefix: bool | None = None,
                    chat_template: str | None = None, eot: int | None = None) -> None:
    """A GGUF holding only a tokenizer (llama architecture metadata, no tensors)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    if merges is not None:
        w.add_token_merges(merges)
    if scores is not None:
        w.add_token_scores(scores)
    for value, add in ((bos, w.add_bos_token_id), (eos, w.add_eos_token_id), (unk, w.add_unk_token_id),
                       (pad, w.add_pad_token_id), (add_bos, w.add_add_bos_token),
                       (add_space_prefix, w.add_add_space_prefix), (chat_template, w.add_chat_template),
                       (eot, w.add_eot_token_id)):
        if value is not None:
            add(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
