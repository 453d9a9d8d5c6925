"""Turns a model path (Hugging Face directory or GGUF file) into a ModelConfig, weights and a tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from pagoda.attention.registry import resolve_backend
from pagoda.config import ModelConfig
from pagoda.models.registry import MODELS
from pagoda.parallel import SINGLE, TensorParallel
from pagoda.tokenizer import Tokenizer

if TYPE_CHECKING:
    from pagoda.models.llama import LlamaForCausalLM


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 where the hardware computes it natively, else float32."""
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype != "auto":
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".gguf")


class ModelFiles:
    """A model on disk, either format, behind one small interface."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"model path {path!r} does not exist (a Hugging Face directory or a .gguf file)")
        self.path = path
        self.gguf = None
        if is_gguf(path):
            from pagoda.weights.gguf_checkpoint import GGUFCheckpoint

            self.gguf = GGUFCheckpoint(path)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    def hf_config(self) -> dict[str, Any]:
        if self.gguf is not None:
            return self.gguf.hf_config()
        from pagoda.weights.safetensors_dir import read_hf_config

        return read_hf_config(self.path)

    def iter_weights(self, keep_quantized: bool = False) -> Iterator[tuple[str, Any]]:
        """(HF name, tensor) pairs; with ``keep_quantized`` GGUF's quantized tensors come packed."""
        if self.gguf is not None:
            return self.gguf.iter_weights(dequantize=not keep_quantized)
        from pagoda.weights.safetensors_dir import iter_safetensors

        return iter_safetensors(self.path)

    def num_tensors(self) -> int | None:
        return self.gguf.num_weights if self.gguf is not None else None

    def tensor_types(self) -> dict[str, Any]:
        """HF name -> GGML type of each GGUF tensor (empty for safetensors)."""
        if self.gguf is None:
            return {}
        from pagoda.weights.gguf_checkpoint import hf_tensor_name

        return {hf_tensor_name(t.name): t.tensor_type for t in self.gguf.reader.tensors
                if t.name != "rope_freqs.weight"}

    def tokenizer(self, tokenizer_path: str | None = None) -> Tokenizer:
        if tokenizer_path is not None:
            return Tokenizer.from_pretrained(tokenizer_path)
        if self.gguf is not None:
            from pagoda.weights.gguf_tokenizer import tokenizer_from_gguf

            return tokenizer_from_gguf(self.gguf)
        return Tokenizer.from_pretrained(self.path)


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


QUANTIZATIONS = ("gguf", "fp8", "w8a8")


def resolve_quantization(quantization: str | None, files: ModelFiles, device: torch.device) -> str | None:
    """"auto": "gguf" for GGUF files on CPU (the int4 kernel is a CPU one), the checkpoint's own scheme for a
    quantized Hugging Face directory ("compressed-tensors", "awq", "gptq"), else None (dense). A quantized checkpoint
    with an unsupported ``quantization_config`` fails here, naming the field."""
    scheme = checkpoint_scheme(files)
    if scheme is not None:
        method = scheme[0]
        allowed = ("auto", "w8a8") if method == "compressed-tensors" else ("auto",)  # its own scheme
        if quantization not in allowed:
            raise ValueError(f"{files.path!r} is a {method} checkpoint: quantization must be "
                             f"{' or '.join(map(repr, allowed))}, got {quantization!r}")
        return method
    if quantization == "auto":
        return "gguf" if files.gguf is not None and device.type == "cpu" else None
    if quantization == "gguf" and files.gguf is None:
        raise ValueError("quantization='gguf' needs a GGUF model file")
    if quantization not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantization must be 'auto', {', '.join(map(repr, QUANTIZATIONS))} or None, "
                         f"got {quantization!r}")
    return quantization


def checkpoint_scheme(files: ModelFiles) -> tuple[str, Any] | None:
    """A Hugging Face directory's quantization scheme (None for dense weights and GGUF files)."""
    if files.gguf is not None:
        return None
    from pagoda.quantization.checkpoint_scheme import checkpoint_scheme as scheme_of

    return scheme_of(files.hf_config())


def load_model(files: ModelFiles, config: ModelConfig, device: torch.device, quantization: str | None = None,
               show_progress: bool = True, tp: TensorParallel = SINGLE,
               prune: Callable[[LlamaForCausalLM], None] | None = None) -> LlamaForCausalLM:
    """Builds the architecture's module in ``config.dtype`` and fills it from the checkpoint.

    ``quantization="gguf"`` keeps Q4_0 / Q4_1 / Q8_0 and K-quant matrices packed (see
    ``pagoda.quantization.gguf_swap``); "w8a8"
    quantizes the linear layers to int8 after loading, "compressed-tensors" loads int8 codes as stored.
    With ``tp`` the module holds only this rank's shard (each parameter's weight_loader slices);
    ``prune`` drops modules before loading (a pipeline stage's other layers; ``files`` must skip them).
    The attention backend named by ``config.attention_backend`` is resolved here, once; the model
    keeps it as ``model.attention_backend`` for the runner.
    """
    cls = MODELS.create(config.architecture)
    with _default_dtype(config.dtype), torch.device(device):
        model = cls(config, attention_backend=resolve_backend(config.attention_backend, torch.device(device)), tp=tp)
    if prune is not None:
        prune(model)
    keep = quantization == "gguf"
    if keep:
        from pagoda.quantization.gguf_swap import swap_int4_linears

        swap_int4_linears(model, files.tensor_types(), config.dtype, config.deterministic,
                          packed_only=config.weights_memory == "packed")
    if quantization == "compressed-tensors":
        from pagoda.quantization.compressed_tensors import CompressedTensorsConfig, swap_compressed_linears

        scheme = checkpoint_scheme(files)
        assert scheme is not None and isinstance(scheme[1], CompressedTensorsConfig)
        swap_compressed_linears(model, scheme[1])
    if quantization in ("awq", "gptq"):
        from pagoda.quantization.int4_checkpoint import Int4CheckpointConfig, swap_int4_checkpoint_linears

        scheme = checkpoint_scheme(files)
        assert scheme is not None and isinstance(scheme[1], Int4CheckpointConfig)
        swap_int4_checkpoint_linears(model, scheme[1], config.dtype)
    weights = tqdm(files.iter_weights(keep_quantized=keep), desc=f"Loading {files.name}", unit=" tensors",
                   total=files.num_tensors(), disable=not show_progress, leave=False)
    loaded = model.load_weights(weights)
    if quantization == "fp8":
        from pagoda.quantization.fp8 import quantize_fp8_

        quantize_fp8_(model)
    if quantization == "w8a8":
        from pagoda.quantization.smoothing import calibration_token_ids
        from pagoda.quantization.w8a8 import quantize_w8a8_

        # a pipeline stage cannot run the whole model's calibration forward: it quantizes unsmoothed
        quantize_w8a8_(model, calibration_token_ids(files.tokenizer()) if prune is None else None)
    if quantization == "compressed-tensors":
        from pagoda.quantization.compressed_tensors import finalize_int8_linears

        finalize_int8_linears(model, loaded)
    if keep or quantization in ("awq", "gptq"):
        from pagoda.quantization.gguf_swap import finalize_int4_linears

        finalize_int4_linears(model)
    for module in model.modules():
        prepack = getattr(module, "prepack", None)
        if prepack is not None:
            prepack()
    expected = {n for n, _ in model.named_parameters()}  # packed layers have none left
    missing = expected - loaded
    if missing:
        raise ValueError(f"checkpoint {files.path!r} lacks weights for: {sorted(missing)[:8]}")
    return model.eval()
