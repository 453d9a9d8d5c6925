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


def _fix_interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter turns a scalar into an int with ``int(array)``, which numpy 2.4 refuses for its
    shape-(1,) scalars, so any loop with a runtime bound fails; the upstream fix (triton #9171, PR #9172)
    squeezes first. Applied here, under the interpreter only, until a release carries it."""
    import triton.runtime.interpreter as interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "pagoda_fixed", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.pagoda_fixed = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


if on_interpreter():
    _fix_interpreter_scalar_index()
