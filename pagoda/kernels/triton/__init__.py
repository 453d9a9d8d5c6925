"""Triton kernels for CUDA devices, one file per kernel, each with the torch reference it is tested against.

CI has no GPU: the tests run every kernel under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors),
which must be set before this package's modules are imported (``triton.jit`` reads it at decoration).

Determinism: every kernel reduces in a fixed order of fixed-size tiles chosen from the shapes of one row
alone (never from the batch), so a row's result does not depend on the other rows of its step. Kernels
whose tile sizes could differ between CUDA and the interpreter take them as arguments.
"""

from __future__ import annotations

import torch


def on_interpreter() -> bool:
    """Whether Triton runs kernels on the CPU interpreter (set by ``TRITON_INTERPRET=1``)."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(t: torch.Tensor) -> None:
    """Triton kernels need CUDA tensors, or CPU tensors under the interpreter."""
    if t.is_cuda or (t.is_cpu and on_interpreter()):
        return
    raise RuntimeError(f"Triton kernels run on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got a "
                       f"{t.device.type} tensor")
