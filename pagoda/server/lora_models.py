"""The LoRA adapters a server offers as models: ``--lora-modules`` at start, and those loaded and
unloaded at run time (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``).

Each adapter is checked when it is added (files, PEFT variant, target modules, rank against the
engine's ``max_lora_rank``), so a bad one is refused there, naming the problem; the engine reads
it again on its first request and checks its shapes against the model. Ids are never reused, so a
name loaded again from another directory never meets the old adapter's cached KV.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from pagoda.lora.peft_adapter import LoRALoadError, read_peft_adapter
from pagoda.lora.request import LoRARequest
from pagoda.server.errors import APIError


class LoRAModels:
    def __init__(self, base_model: str, max_lora_rank: int, modules: Sequence[tuple[str, str]] = ()) -> None:
        self.base_model = base_model
        self.max_lora_rank = max_lora_rank
        self._by_name: dict[str, LoRARequest] = {}
        self._ids = itertools.count(1)
        for name, path in modules:
            self.load(name, path)

    def get(self, name: str) -> LoRARequest | None:
        return self._by_name.get(name)

    def adapters(self) -> list[LoRARequest]:
        return list(self._by_name.values())

    def load(self, name: str, path: str) -> LoRARequest:
        """Checks and registers an adapter; ``APIError`` 400 naming the problem."""
        if not name or name == self.base_model:
            raise APIError(400, f"LoRA adapter name {name!r} is empty or the base model's", param="lora_name")
        if name in self._by_name:
            raise APIError(400, f"LoRA adapter {name!r} is already loaded", param="lora_name")
        try:
            read_peft_adapter(path, self.max_lora_rank)
        except LoRALoadError as exc:
            raise APIError(400, str(exc), param="lora_path") from None
        request = LoRARequest(name, next(self._ids), path)
        self._by_name[name] = request
        return request

    def unload(self, name: str) -> LoRARequest:
        request = self._by_name.pop(name, None)
        if request is None:
            raise APIError(404, f"LoRA adapter {name!r} is not loaded", param="lora_name", code="model_not_found")
        return request
