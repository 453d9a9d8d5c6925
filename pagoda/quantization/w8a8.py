"""W8A8 INT8: int8 weights per output channel, int8 activations per token, int32 accumulation.

Dense checkpoints are smoothed before quantizing (SmoothQuant, ``pagoda.quantization.smoothing``): each layer's
input channels are divided by s and its weight's columns multiplied by it, with s from one calibration forward.

``quantization="w8a8"``: after the dense checkpoint is loaded, every linear layer's weight is quantized
symmetrically per output channel (scale = the row's max |w| / 127) and the layer swapped for ``Int8Linear``.
Compressed-tensors INT8 checkpoints (``pagoda.quantization.compressed_tensors``) load their int8 weights and
scales straight onto the same layer. Each forward quantizes its input per row (token) the same way, multiplies
the codes with ``torch._int_mm`` (oneDNN's VNNI int8 GEMM: ``vpdpbusd``, about 1.6-2x the bf16 GEMM on this
machine's shapes) and applies one fused epilogue, ``y = float(acc) * (s_x * s_w) (+ b)``, rounded once.

Batch invariance: integer sums are exact, so the GEMM's blocking cannot change a row's result; the
quantization (one amax per row) and the epilogue (one expression per element) are per-row C++ kernels.

The LM head becomes int8 too (``Int8LMHead``): at 64 rows its float32 fixed-order product over the 49,152-token
vocabulary was a quarter of a decode step. Its weight rows are int8 per row; each hidden row goes in as two
int8 rows, its codes and its rounding error's codes (one row of codes cost 0.3% of perplexity on the quality
bench; codes per block of 32 as in Q8_0, as much), smoothed as the linears are. The embedding stays dense (a tied one keeps its weight for
the lookup; the head holds its own int8 copy).

Without VNNI (AVX-512 VNNI or AVX-VNNI in the CPU flags) the int8 GEMM falls back to slower instruction
sequences, so ``quantization="w8a8"`` keeps the dense weights and warns.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from pagoda.kernels import cpu_kernels
from pagoda.layers.embedding import ParallelLMHead
from pagoda.layers.linear import LinearBase, RowParallelLinear, set_weight_loader
from pagoda.parallel import TensorParallel
from pagoda.quantization.smoothing import input_amax, smoothing_scales

if TYPE_CHECKING:
    from pagoda.models.llama import LlamaForCausalLM

INT8_MAX = 127
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_has_vnni() -> bool:
    """Whether /proc/cpuinfo lists an int8 dot-product extension (AVX-512 VNNI, AVX-VNNI or AMX-INT8)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in VNNI_FLAGS)


def warn_no_vnni(what: str) -> None:
    warnings.warn(f"quantization='w8a8': this CPU has no int8 dot-product instructions ({' / '.join(VNNI_FLAGS)} "
                  f"not in its flags); {what}", stacklevel=3)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 (portable PyTorch): (codes [R, C] int8, scales [R, 1] float32), x ~= codes * scales.

    The same arithmetic as ``torch.ops.pagoda.quantize_rows_int8``: codes = rne(x * (127 / amax)), a zero row
    has scale 1."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    nonzero = amax > 0
    scale = torch.where(nonzero, amax / INT8_MAX, torch.ones_like(amax))
    # a true division (``127 / tensor`` would multiply by a reciprocal, an ulp off the kernel's quotient)
    inv = torch.where(nonzero, torch.full_like(amax, INT8_MAX).div(amax), torch.zeros_like(amax))
    return torch.round(xf * inv).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None = None, inv_smooth: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (float) times int8 weight [N, K] with per-channel scales [N] -> [M, N] in x's dtype; with
    ``inv_smooth`` [K] (float32) the rows are quantized as x * inv_smooth (SmoothQuant, ``pagoda.quantization.
    smoothing``)."""
    if cpu_kernels.use_for(x):
        codes, scale = torch.ops.pagoda.quantize_rows_int8(x.contiguous(), inv_smooth)
        acc = torch._int_mm(codes, weight.t())
        return torch.ops.pagoda.int8_scaled_epilogue(acc, scale, weight_scale, bias, x.dtype)
    codes, scale = quantize_rows(x if inv_smooth is None else x.float() * inv_smooth)
    acc = torch._int_mm(codes, weight.t())
    y = acc.float() * (scale * weight_scale)
    return (y if bias is None else y + bias).to(x.dtype)


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight [out, in] and float32 per-output-channel scales.

    Built either from a loaded dense layer (``from_dense``: quantized here) or empty for a checkpoint that
    stores int8 codes (``weight`` and ``weight_scale`` take the replaced layer's shard maths through their
    ``weight_loader``s). ``forward`` keeps the collective of the layer it replaces (row-parallel: all-reduce,
    then the bias)."""

    def __init__(self, base: LinearBase) -> None:
        super().__init__()
        self.tp: TensorParallel = base.tp
        self.in_features, self.out_features = base.in_features, base.out_features
        self.reduce = isinstance(base, RowParallelLinear)
        self.weight = nn.Parameter(torch.zeros(base.out_features, base.in_features, dtype=torch.int8),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(base.out_features, 1), requires_grad=False)
        set_weight_loader(self.weight, base.weight_loader)
        # a row-parallel layer splits its inputs: every rank keeps every output channel's scale
        set_weight_loader(self.weight_scale, _copy_whole if self.reduce else base.weight_loader)
        self.bias = base.bias
        self._bias_f32: torch.Tensor | None = None
        self.inv_smooth: torch.Tensor | None
        self.register_buffer("inv_smooth", None)  # SmoothQuant's 1 / s per input channel (from_dense)

    @classmethod
    def from_dense(cls, dense: LinearBase, input_amax: torch.Tensor | None = None) -> Int8Linear:
        """Quantizes a loaded layer; with ``input_amax`` (its inputs' largest |x| per channel, from a
        calibration forward) smoothed first."""
        layer = cls(dense)
        w = dense.weight.detach().float()
        if input_amax is not None:
            s = smoothing_scales(input_amax, w)
            w = w * s
            layer.inv_smooth = s.reciprocal()
        codes, scale = quantize_rows(w)
        layer.weight.data.copy_(codes)
        layer.weight_scale.data.copy_(scale)
        layer.finalize()
        return layer

    def finalize(self) -> None:
        """After loading: the scales become a flat float32 [out] buffer and the bias float32 for the epilogue."""
        scale = self.weight_scale.data.float().reshape(-1).contiguous()
        del self.weight_scale
        self.register_buffer("weight_scale", scale)
        if self.bias is not None and not self.reduce:
            self._bias_f32 = self.bias.detach().float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = int8_matmul(x.reshape(-1, self.in_features), self.weight, self.weight_scale, self._bias_f32,
                        self.inv_smooth)
        y = y.reshape(*shape[:-1], self.out_features)
        if self.reduce:
            y = self.tp.all_reduce(y)
            return y if self.bias is None else y + self.bias
        return y

    def dequantized_weight(self) -> torch.Tensor:
        """float32 [out, in]: what the matmul multiplies its (unsmoothed) input by (for tests)."""
        w = self.weight.float() * self.weight_scale.reshape(-1, 1)
        return w if self.inv_smooth is None else w * self.inv_smooth


class Int8LMHead(nn.Module):
    """A ``ParallelLMHead`` in int8: the vocabulary shard's rows quantized per row, each hidden row as two int8
    rows (its codes, then its rounding error's codes), exact int32 sums in one ``torch._int_mm`` (a row's
    logits do not depend on the batch), float32 logits gathered across ranks."""

    def __init__(self, head: ParallelLMHead, input_amax: torch.Tensor | None = None) -> None:
        """``input_amax``: the final norm's largest |output| per channel, to smooth by (as ``Int8Linear``)."""
        super().__init__()
        self.tp: TensorParallel = head.tp
        self.vocab_size = head.vocab_size
        self.hidden_size = head.weight.shape[1]
        w = head.weight.detach().float()
        inv_smooth = None
        if input_amax is not None:
            s = smoothing_scales(input_amax, w)
            w, inv_smooth = w * s, s.reciprocal()
        codes, scale = quantize_rows(w)
        self.weight: torch.Tensor
        self.weight_scale: torch.Tensor
        self.inv_smooth: torch.Tensor | None
        self.register_buffer("weight", codes)  # built from the loaded head, not loaded itself
        self.register_buffer("weight_scale", scale.reshape(-1).contiguous())
        self.register_buffer("inv_smooth", inv_smooth)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, self.hidden_size).float()
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        # two digits, x ~= q1 s1 + q2 s2: with one, the logits' rounding cost 0.3% of perplexity
        q1, s1 = _quantize_rows(x)
        q2, s2 = _quantize_rows(x - q1.float() * s1)
        m = x.shape[0]
        acc = torch._int_mm(torch.cat([q1, q2]), self.weight.t())
        logits = _epilogue(acc[:m], s1, self.weight_scale) + _epilogue(acc[m:], s2, self.weight_scale)
        logits = self.tp.all_gather_last_dim(logits.reshape(*hidden.shape[:-1], -1))
        return logits[..., : self.vocab_size]


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.pagoda.quantize_rows_int8(x, None) if cpu_kernels.use_for(x) else quantize_rows(x)


def _epilogue(acc: torch.Tensor, scale: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """float32 acc * (scale * weight_scale), the kernel's expression."""
    if cpu_kernels.available():
        return torch.ops.pagoda.int8_scaled_epilogue(acc, scale, weight_scale, None, torch.float32)
    return acc.float() * (scale * weight_scale)


def _copy_whole(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
    param.data.copy_(loaded.reshape(param.shape))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def quantize_w8a8_(model: nn.Module, calibration_ids: list[int] | None = None) -> int:
    """Swaps, in place, every loaded linear layer for an ``Int8Linear`` quantized from its weights, and the LM
    head for an ``Int8LMHead``; returns how many. With ``calibration_ids`` (token ids) the whole model first
    runs them once and each layer is smoothed by its inputs' channel maxima (SmoothQuant). On a CPU without VNNI the model stays dense (with a warning)
    and 0 is returned."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"quantization='w8a8' runs on the CPU (torch._int_mm with VNNI); the model is on {device}")
    if not cpu_has_vnni():
        warn_no_vnni("keeping the dense weights")
        return 0
    amax = input_amax(cast("LlamaForCausalLM", model), calibration_ids) if calibration_ids else {}
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LinearBase):
            _replace(model, name, Int8Linear.from_dense(module, amax.get(name)))
            swapped += 1
        elif isinstance(module, ParallelLMHead):
            _replace(model, name, Int8LMHead(module, amax.get(name)))
            swapped += 1
    return swapped
