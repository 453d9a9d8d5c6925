"""Which quantized format a Hugging Face checkpoint is in (its config.json ``quantization_config``)."""

from __future__ import annotations

from typing import Any

from pagoda.quantization.compressed_tensors import CompressedTensorsConfig, parse_quantization_config
from pagoda.quantization.int4_checkpoint import Int4CheckpointConfig, parse_int4_config

QUANT_METHODS = ("compressed-tensors", "awq", "gptq")


def checkpoint_scheme(hf_config: dict[str, Any]) -> tuple[str, CompressedTensorsConfig | Int4CheckpointConfig] | None:
    """(quant_method, validated scheme), or None for a dense checkpoint; raises ValueError naming the first
    unsupported field and the values supported."""
    qc = hf_config.get("quantization_config")
    if qc is None:
        return None
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        scheme = parse_quantization_config(hf_config)
        assert scheme is not None
        return method, scheme
    if method in ("awq", "gptq"):
        return method, parse_int4_config(qc)
    raise ValueError(f"unsupported quantization_config: quant_method = {method!r} "
                     f"(Pagoda supports {list(QUANT_METHODS)!r})")
