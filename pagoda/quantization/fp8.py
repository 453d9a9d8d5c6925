"""FP8 (E4M3) weights with per-token dynamic activation scales, multiplied by ``torch._scaled_mm``.

``quantization="fp8"``: after the dense checkpoint is loaded, every linear layer's weight is quantized per
output channel (scale = the row's max |w| / 448, E4M3's largest finite value) and the layer swapped for
``Fp8Linear``. Each forward quantizes its input per row (token) the same way and runs one scaled matmul:
``y[i, j] = s_x[i] * s_w[j] * sum_k q_x[i, k] q_w[j, k]``, accumulated in float32. The LM head and the
embedding stay dense (they are most sensitive, and the head's logits are float32).

On CUDA the scaled matmul needs compute capability 8.9 or later (Ada, Hopper); ``torch._scaled_mm`` also runs
on the CPU, which is how CI checks the numerics against the dequantized weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pagoda.layers.linear import LinearBase, RowParallelLinear
from pagoda.parallel import TensorParallel

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MIN_CAPABILITY = (8, 9)


def check_fp8_capability(capability: tuple[int, int], name: str = "this GPU") -> None:
    if capability < MIN_CAPABILITY:
        raise ValueError(f"quantization='fp8' needs CUDA compute capability 8.9 or later (Ada, Hopper); "
                         f"{name} has {capability[0]}.{capability[1]}")


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric E4M3: (codes [R, C] fp8, scales [R, 1] float32) with x ~= codes * scales."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """A linear layer with an E4M3 weight and per-output-channel scales; ``forward`` keeps the collective
    of the layer it replaces (row-parallel: all-reduce, then the bias)."""

    def __init__(self, dense: LinearBase) -> None:
        super().__init__()
        self.tp: TensorParallel = dense.tp
        self.reduce = isinstance(dense, RowParallelLinear)
        codes, scale = quantize_rows(dense.weight.detach())
        self.weight = nn.Parameter(codes, requires_grad=False)  # [out, in], the checkpoint's name
        self.weight_scale: torch.Tensor
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # [1, out] float32
        self.bias = dense.bias
        self.base_loader = dense.weight_loader  # the shard maths, for LoRA weights (pagoda.lora)

    lora: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # adds LoRA deltas (pagoda.lora)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        codes, scale = quantize_rows(x.reshape(-1, shape[-1]))
        # cuBLASLt's row-wise scaled matmul writes bfloat16 only; the CPU one any float type
        out_dtype = x.dtype if x.device.type == "cpu" else torch.bfloat16
        y = torch._scaled_mm(codes, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=out_dtype)
        y = y.to(x.dtype).reshape(*shape[:-1], y.shape[-1])
        if self.lora is not None:  # LoRA deltas in the activation dtype, before the all-reduce
            y = self.lora(x, y)
        if self.reduce:
            y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias

    def dequantized_weight(self) -> torch.Tensor:
        """float32 [out, in]: what the matmul multiplies by (for tests)."""
        return self.weight.float() * self.weight_scale.reshape(-1, 1)


def quantize_fp8_(model: nn.Module) -> int:
    """Swaps, in place, every loaded linear layer whose shape the scaled matmul takes (both dims multiples of
    16) for an ``Fp8Linear``; returns how many. Raises on a CUDA device older than compute capability 8.9."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        check_fp8_capability(torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device))
    swapped = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LinearBase) or module.in_features % 16 or module.out_features % 16:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, Fp8Linear(module))
        swapped += 1
    return swapped
