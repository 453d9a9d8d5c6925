"""A GGUF file read as a Hugging Face checkpoint: config.json-style dict plus HF-named tensors.

llama.cpp's converter renames tensors (`blk.3.attn_q.weight`), stores matrices as [ne0=in, ne1=out]
(which is HF's [out, in] once numpy reverses the dims) and permutes the rows of Llama's Q and K
weights so that its rope can rotate adjacent pairs. We undo all three, so the engine sees exactly
what a Hugging Face directory would give it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType

from pagoda.weights.quantized_tensor import QuantizedTensor, dequantize_blocks

# GGUF architecture -> (HF architecture, HF model_type, whether Q/K rows were permuted for rope).
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
}

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Llama 3.1-style rope scaling is stored as this tensor of per-frequency divisors, not as metadata.
_ROPE_FREQS = "rope_freqs.weight"

_DENSE_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


class _FastReader(gguf.GGUFReader):
    """GGUFReader that parses metadata arrays in bulk, through a plain ndarray view of the memory map.

    The stock reader makes a few `np.memmap` slices per array element: for a 49k vocabulary (tokens,
    token types, merges) that took 2 s here, and 0.1 s this way. Fields keep the stock layout, except
    that a numeric array is one part holding all its values (`contents()` returns the same list).
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self._plain = self.data.view(np.ndarray)
        dtype = np.dtype(dtype)
        count = int(count)
        arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list[int], list]:
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype, count = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        item_type, n, start = GGUFValueType(int(raw_itype[0])), int(count[0]), orig_offs + 12
        parts: list[np.ndarray] = [raw_itype, count]
        if item_type in self.gguf_scalar_to_np:
            values = self._get(start, self.gguf_scalar_to_np[item_type], n)
            return 12 + values.nbytes, [*parts, values], [2], [GGUFValueType.ARRAY, item_type]
        if item_type != GGUFValueType.STRING:  # arrays of arrays: rare and small
            return super()._get_field_parts(orig_offs, raw_type)
        plain, pos = self._plain, start
        for _ in range(n):  # each string: uint64 length, then its bytes
            length = int.from_bytes(plain[pos:pos + 8].tobytes(), "little")
            parts.append(plain[pos + 8:pos + 8 + length])
            pos += 8 + length
        return pos - orig_offs, parts, list(range(2, 2 + n)), [GGUFValueType.ARRAY, item_type]


class GGUFCheckpoint:
    """A memory-mapped GGUF file; weights are read (and dequantized) one tensor at a time."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.reader = _FastReader(self.path)
        self.architecture: str = self.get("general.architecture")
        if self.architecture not in _ARCHITECTURES:
            raise ValueError(f"{self.path}: GGUF architecture {self.architecture!r} is not supported; "
                             f"supported: {sorted(_ARCHITECTURES)}")
        self._tensors = {t.name: t for t in self.reader.tensors}

    # ---- metadata -------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value as a Python scalar, str or list (`default` if the key is absent)."""
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def _arch(self, key: str, default: Any = None) -> Any:
        return self.get(f"{self.architecture}.{key}", default)

    def hf_config(self) -> dict[str, Any]:
        """The `config.json` a Hugging Face checkpoint of this model would have."""
        architecture, model_type, _ = _ARCHITECTURES[self.architecture]
        hidden = self._arch("embedding_length")
        heads = self._arch("attention.head_count")
        kv_heads = self._arch("attention.head_count_kv", heads)
        head_dim = self._arch("attention.key_length") or self._arch("rope.dimension_count") or hidden // heads
        vocab = self._arch("vocab_size") or len(self.reader.fields["tokenizer.ggml.tokens"].data)
        config: dict[str, Any] = {
            "architectures": [architecture],
            "model_type": model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self._arch("feed_forward_length"),
            "num_hidden_layers": self._arch("block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": float(self._arch("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self._arch("rope.freq_base", 10000.0)),
            "rope_scaling": self._rope_scaling(head_dim),
            "max_position_embeddings": self._arch("context_length"),
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "attention_bias": "blk.0.attn_q.bias" in self._tensors,
            "torch_dtype": "float32",
        }
        for name in ("bos", "eos", "padding"):
            token_id = self.get(f"tokenizer.ggml.{name}_token_id")
            if token_id is not None:
                config["pad_token_id" if name == "padding" else f"{name}_token_id"] = token_id
        return config

    def _rope_scaling(self, head_dim: int) -> dict[str, Any] | None:
        if _ROPE_FREQS in self._tensors:
            factors = self._tensors[_ROPE_FREQS].data.astype(np.float64).reshape(-1)
            return _llama3_rope_scaling(factors, float(self._arch("rope.freq_base", 10000.0)), head_dim)
        kind = self._arch("rope.scaling.type")
        if kind in (None, "none"):
            return None
        scaling: dict[str, Any] = {"rope_type": kind, "factor": float(self._arch("rope.scaling.factor", 1.0))}
        original = self._arch("rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling

    # ---- weights --------------------------------------------------------------------------

    @property
    def num_weights(self) -> int:
        """How many tensors `iter_weights` yields (for a progress bar)."""
        return sum(1 for name in self._tensors if name != _ROPE_FREQS)

    def iter_weights(self, dequantize: bool = True) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        """(HF name, tensor) pairs in file order.

        Dense tensors come as float32 torch tensors in HF layout. Quantized ones are dequantized to
        float32 too, or with `dequantize=False` handed over packed as `QuantizedTensor`.
        """
        _, _, permuted = _ARCHITECTURES[self.architecture]
        heads = self._arch("attention.head_count")
        kv_heads = self._arch("attention.head_count_kv", heads)
        for tensor in self.reader.tensors:
            if tensor.name == _ROPE_FREQS:
                continue  # folded into hf_config()["rope_scaling"]
            name = hf_tensor_name(tensor.name)
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            rows = shape[0]
            n_head = None
            if permuted and (".self_attn.q_proj." in name or ".self_attn.k_proj." in name):
                n_head = heads if ".q_proj." in name else kv_heads
            if tensor.tensor_type in _DENSE_TYPES or dequantize:
                weight = dequantize_blocks(tensor.data, tensor.tensor_type, shape)
                if n_head is not None:
                    weight = unpermute_rows(weight, n_head).contiguous()
                yield name, weight
            else:
                if len(shape) != 2:
                    raise ValueError(f"{tensor.name}: quantized tensor of shape {shape} is not a matrix")
                data = tensor.data.reshape(rows, -1)
                data = unpermute_rows(data, n_head) if n_head is not None else data
                # A private, writable copy: independent of the file mapping and safe for torch.from_numpy.
                yield name, QuantizedTensor(tensor.tensor_type, (rows, shape[1]), np.array(data, order="C"))

    # ---- tokenizer ------------------------------------------------------------------------

def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match:
        layer, part, kind = match.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    else:
        stem, _, kind = gguf_name.rpartition(".")
        if stem in _GLOBAL_NAMES and kind in ("weight", "bias"):
            return f"{_GLOBAL_NAMES[stem]}.{kind}"
    raise ValueError(f"unknown GGUF tensor {gguf_name!r}")


def unpermute_rows(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's `permute` of Q/K rows (works on torch tensors and numpy arrays).

    Within each head, HF orders rows [first halves of the rotary pairs..., second halves...];
    llama.cpp interleaves them. Same as transformers' GGUF loader `_reverse_permute_weights`.
    """
    rows = w.shape[0]
    x = w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
    x = x.transpose(1, 2) if isinstance(x, torch.Tensor) else x.swapaxes(1, 2)
    return x.reshape(w.shape)


def llama3_rope_factors(theta: float, head_dim: int, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """llama.cpp's `rope_freqs` for Llama 3 scaling: the divisor of each rotary frequency."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    factors = 1.0 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelen < original_max_position_embeddings / high_freq_factor, 1.0, factors)
    return np.where(wavelen > original_max_position_embeddings / low_freq_factor, factor, factors)


def _llama3_rope_scaling(factors: np.ndarray, theta: float, head_dim: int) -> dict[str, Any]:
    """Recover HF's llama3 `rope_scaling` from llama.cpp's per-frequency divisors.

    The divisors only fix two of the three wavelength parameters, so we assume low_freq_factor = 1
    (every Llama 3.x release) and check that the result reproduces the tensor exactly.
    """
    factor = round(float(factors.max()), 4)  # stored as float32: 8.0000019 means 8
    candidates = [(1.0, 4.0, 8192)]
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    medium = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    if factor > 1 and medium.sum() >= 2:
        # In the medium band, smooth = old/(high-low) * (1/wavelen) - low/(high-low), linear in 1/wavelen.
        smooth = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(inv_freq[medium] / (2 * math.pi), smooth, 1)
        high = 1.0 - 1.0 / intercept
        candidates.insert(0, (1.0, float(round(high, 4)), int(round(slope * (high - 1.0)))))
    for low, high, original in candidates:
        if np.allclose(llama3_rope_factors(theta, head_dim, factor, low, high, original), factors, rtol=1e-4):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": original}
    raise ValueError("rope_freqs.weight does not match Llama 3 rope scaling; cannot express it as rope_scaling")
