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


def _numpy_24_index_fix() -> None:
    """Triton 3.6's interpreter turns a scalar into an int with ``int(array)``, which numpy 2.4 refuses for
    its shape-(1,) scalars (a loop with a runtime bound fails); the upstream fix (triton #9171, PR #9172)
    squeezes first. Applied here until a release carries it."""
    import triton.runtime.interpreter as interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "pagoda_fixed", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.pagoda_fixed = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


if not ON_GPU:
    _numpy_24_index_fix()
