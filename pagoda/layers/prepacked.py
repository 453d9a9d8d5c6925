"""Dense weights reordered once into oneDNN's blocked layout for bfloat16 matmuls on CPU.

``F.linear`` re-reads a plain row-major weight at every call; oneDNN's blocked layout suits its
bf16 kernels (measured on the default model's shapes: 1.2-2x faster at 1-64 rows, ~10% at 512).
Other dtypes and devices keep the plain weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepack_weight(weight: torch.Tensor, batch_hint: int = 64) -> torch.Tensor | None:
    """The weight in oneDNN's layout, or None where the plain path is the right one."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor | None
           ) -> torch.Tensor:
    """x W^T (+ b) through the packed weight when there is one."""
    if packed is None:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
