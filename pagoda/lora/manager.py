"""Adapters of one process: host-memory copies, ``max_loras`` slots (LRU), and each step's rows.

The driver ``plan``s a step (which slot each scheduled request's adapter uses, swapping idle
adapters out least-recently-used first); every process ``activate``s the plan before its forward
(copies newly placed adapters from host memory into their slots, sets the rows of each slot).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from pagoda.lora.config import LoRAConfig
from pagoda.lora.lora_linear import LoRABatch, LoRALinear, LoRAWeights
from pagoda.lora.peft_adapter import LoRALoadError, read_peft_adapter
from pagoda.lora.request import LoRARequest

NO_SLOT = -1


@dataclass
class LoRAStep:
    """One step's adapter plan: adapters to place into slots first, then each scheduled request's
    slot (``NO_SLOT``: the base model) and its number of rows, in the step's row order."""

    loads: list[tuple[int, LoRARequest]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    num_rows: list[int] = field(default_factory=list)


class LoRAManager:
    """Attaches a ``LoRALinear`` to every fused projection of ``model`` (names from its
    ``stacked_params``) and owns the adapters. ``add`` reads and checks an adapter into host memory
    (raising ``LoRALoadError``), ``plan`` / ``activate`` run a step, ``remove`` forgets one."""

    def __init__(self, model: nn.Module, config: LoRAConfig, dtype: torch.dtype) -> None:
        self.config = config
        self.batch = LoRABatch()
        # checkpoint module fragment -> (fused module fragment, part)
        self.fused = {ckpt: (param, part) for ckpt, param, part in getattr(model, "stacked_params", [])}
        self.layers: dict[str, LoRALinear] = {}
        targets = {param for param, _ in self.fused.values()} | {"o_proj", "down_proj"}
        for name, module in model.named_modules():
            if name.rpartition(".")[2] in targets:
                lora = LoRALinear(module, self.batch, config.max_loras, config.max_lora_rank, dtype)
                module.lora = lora
                self.layers[name] = lora
        self.requests: dict[int, LoRARequest] = {}
        # keyed by the whole request: an id removed and added again from elsewhere is read afresh
        self.host: OrderedDict[LoRARequest, dict[str, LoRAWeights]] = OrderedDict()  # LRU first
        self.slot_ids: list[int | None] = [None] * config.max_loras  # the driver's view (plan)
        self.slot_used: list[int] = [0] * config.max_loras
        self.resident: list[LoRARequest | None] = [None] * config.max_loras  # what this process's slots hold
        self.num_swaps = 0
        self._clock = 0

    # -- adapters -------------------------------------------------------------------------
    def add(self, request: LoRARequest) -> None:
        """Reads and checks the adapter into host memory (once per id); raises ``LoRALoadError``."""
        known = self.requests.get(request.lora_int_id)
        if known is not None and known != request:
            raise LoRALoadError(f"LoRA id {request.lora_int_id} is already {known.lora_name!r} at "
                                f"{known.lora_path!r}")
        self._host_weights(request)
        self.requests[request.lora_int_id] = request

    def remove(self, lora_id: int) -> None:
        self.requests.pop(lora_id, None)
        for key in [k for k in self.host if k.lora_int_id == lora_id]:
            del self.host[key]
        for slot, held in enumerate(self.slot_ids):
            if held == lora_id:
                self.slot_ids[slot] = None
        for slot, lora in enumerate(self.resident):
            if lora is not None and lora.lora_int_id == lora_id:
                self._place(slot, None, {})

    def _host_weights(self, request: LoRARequest) -> dict[str, LoRAWeights]:
        weights = self.host.get(request)
        if weights is not None:
            self.host.move_to_end(request)
            return weights
        adapter = read_peft_adapter(request.lora_path, self.config.max_lora_rank)
        parts: dict[str, dict[object, tuple[torch.Tensor, torch.Tensor]]] = {}
        for module, ab in adapter.modules.items():
            prefix, _, leaf = module.rpartition(".")
            fused, part = self.fused.get(leaf, (leaf, None))
            name = f"{prefix}.{fused}"
            if name not in self.layers:
                raise LoRALoadError(f"LoRA adapter {request.lora_path!r}: module {module!r} is not in the model")
            parts.setdefault(name, {})[part] = ab
        weights = {name: self.layers[name].shard(name, p) for name, p in parts.items()}
        self.host[request] = weights
        limit = self.config.max_cpu_loras
        while limit is not None and len(self.host) > limit:
            self.host.popitem(last=False)  # read again from disk when next needed
        return weights

    # -- steps ----------------------------------------------------------------------------
    def plan(self, adapters: list[LoRARequest | None], num_rows: list[int]) -> LoRAStep | None:
        """Slots for one step's requests (in row order); None when no request uses an adapter."""
        if all(a is None for a in adapters):
            return None
        self._clock += 1
        needed = {a.lora_int_id: a for a in adapters if a is not None}
        if len(needed) > len(self.slot_ids):
            raise RuntimeError(f"{len(needed)} adapters in one step, but max_loras is {len(self.slot_ids)}")
        step = LoRAStep(num_rows=list(num_rows))
        slot_of = {lid: s for s, lid in enumerate(self.slot_ids) if lid in needed}
        for lid, request in needed.items():
            if lid not in slot_of:
                free = [s for s, held in enumerate(self.slot_ids) if held not in needed]
                slot = min(free, key=lambda s: (self.slot_ids[s] is not None, self.slot_used[s]))  # empty, else LRU
                self.slot_ids[slot] = lid
                slot_of[lid] = slot
                step.loads.append((slot, request))
            self.slot_used[slot_of[lid]] = self._clock
        step.slots = [NO_SLOT if a is None else slot_of[a.lora_int_id] for a in adapters]
        return step

    def activate(self, step: LoRAStep | None, device: torch.device) -> None:
        """Places the step's new adapters into their slots and sets each slot's rows."""
        if step is None:
            self.batch.clear()
            return
        for slot, request in step.loads:
            if self.resident[slot] != request:
                self._place(slot, request, self._host_weights(request))
                self.num_swaps += 1
        row_slots = [slot for slot, n in zip(step.slots, step.num_rows, strict=True) for _ in range(n)]
        self.batch.set_rows(row_slots, device)

    def _place(self, slot: int, lora: LoRARequest | None, weights: dict[str, LoRAWeights]) -> None:
        for name, layer in self.layers.items():
            layer.set_slot(slot, weights.get(name))
        self.resident[slot] = lora
