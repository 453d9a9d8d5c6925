"""Pagoda: a generative-model inference engine.

The public names load lazily, so ``pagoda --help`` and light imports don't pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LLM": "pagoda.entrypoints.llm",
    "SamplingParams": "pagoda.sampling_params",
    "RequestOutput": "pagoda.outputs",
    "CompletionOutput": "pagoda.outputs",
    "Logprob": "pagoda.outputs",
    "InvalidRequestError": "pagoda.errors",
    "LoRARequest": "pagoda.lora.request",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pagoda' has no attribute {name!r}")
