"""Attention backends by name; ``resolve_backend`` picks one once, at model load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagoda.registry import Registry

if TYPE_CHECKING:  # the names are known without importing torch (``pagoda --help``)
    import torch

    from pagoda.attention.backend import AttentionBackend

ATTENTION_BACKENDS: Registry[type[AttentionBackend]] = Registry("attention backend")


@ATTENTION_BACKENDS.register("torch")
def _torch() -> type[AttentionBackend]:
    from pagoda.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend


@ATTENTION_BACKENDS.register("cpu")
def _cpu() -> type[AttentionBackend]:
    from pagoda.attention.cpu_backend import CpuAttentionBackend

    return CpuAttentionBackend


@ATTENTION_BACKENDS.register("triton")
def _triton() -> type[AttentionBackend]:
    from pagoda.attention.triton_backend import TritonAttentionBackend  # needs the triton package

    return TritonAttentionBackend


def resolve_backend(name: str = "auto", device: torch.device | None = None) -> type[AttentionBackend]:
    """``"auto"``: the Triton backend on a CUDA device; elsewhere the C++ CPU kernels when they are
    built (they fall back to PyTorch on other devices), else the portable PyTorch backend."""
    if name == "auto" and device is not None and device.type == "cuda":
        name = "triton"
    if name == "auto":
        from pagoda.kernels import cpu_kernels

        name = "cpu" if cpu_kernels.available() else "torch"
    return ATTENTION_BACKENDS.create(name)
