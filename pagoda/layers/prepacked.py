"""Dense weights reordered once into oneDNN's blocked layout for bfloat16 matmuls on CPU.

``F.linear`` re-reads a plain row-major weight at every call; oneDNN's blocked layout suits its
bf16 kernels (measured on the default model's shapes: 1.2-2x faster at 1-64 rows, ~10% at 512).

Batch invariance: oneDNN's bfloat16 GEMM gives a row the same bits at every row count on this
CPU (measured for 1-3000 rows and the default model's shapes; ``tests/test_batch_invariance.py``
checks it), so bfloat16 keeps it. float32 ``F.linear`` does not (MKL blocks differently for one
row, a few and many), so float32 CPU weights go through Pagoda's fixed-order kernel instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.kernels import cpu_kernels


def prepack_weight(weight: torch.Tensor, batch_hint: int = 64) -> torch.Tensor | None:
    """The weight in oneDNN's layout, or None where the plain path is the right one."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor | None
           ) -> torch.Tensor:
    """x W^T (+ b) through the packed weight when there is one, else (float32 on CPU) the
    fixed-order kernel."""
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    if x.dtype == weight.dtype == torch.float32 and x.is_cpu and x.shape[-1] % 32 == 0 \
            and cpu_kernels.invariant_linear_available():
        shape = x.shape
        y = torch.ops.pagoda.invariant_linear(x.reshape(-1, shape[-1]).contiguous(), weight, _NONE, _NONE,
                                              weight.shape[0], torch.float32).view(*shape[:-1], weight.shape[0])
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


_NONE = torch.empty(0)
