"""Which device the model, the KV cache and sampling live on (the scheduler and KV manager stay on the host)."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the current CUDA device when torch sees one, else the CPU; ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` as asked, with a clear error when no such GPU exists."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise RuntimeError(f"device={spec!r} needs an NVIDIA GPU, but torch sees none ({build}); "
                           f"use device='cpu' or 'auto'")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


def to_device(values: list[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a tensor on ``device``: built on the host, page-locked when the device is a GPU and
    copied without blocking (torch's pinned-memory cache keeps the buffer until the copy is done); on the
    CPU the host tensor itself (CPU torch pins nothing)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)
