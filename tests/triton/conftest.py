"""Triton kernels run under Triton's CPU interpreter here (CI has no GPU); on a GPU machine the same
tests run compiled on CUDA tensors (``scripts/gpu_check.sh``)."""

from __future__ import annotations

import os

import pytest
from kernel_device import ON_GPU

if not ON_GPU:
    # triton.jit reads this when a kernel is decorated: set before pagoda.kernels.triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton")
import pagoda.kernels.triton  # noqa: E402,F401  (under the interpreter: its numpy 2.4 fix)
