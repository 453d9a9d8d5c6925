"""A pipeline stage: a contiguous run of decoder layers, with the hand-offs to its neighbours.

Stage 0 embeds the tokens and keeps the LM head (the driver samples there); the last stage applies
the final norm and sends the hidden states back to the driver. Between stages travel the hidden
state and the residual stream of every token. The loop mirrors ``LlamaModel.forward``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import ModelConfig
from pagoda.distributed.gloo_channels import GlooLink
from pagoda.distributed.shm_ring import ShmRing

if TYPE_CHECKING:
    from pagoda.models.llama import LlamaForCausalLM


def split_layers(num_layers: int, stages: int, sizes: list[int] | None = None,
                 first_stage_extra: float = 0.0) -> list[range]:
    """Layers of each stage, ``sizes`` given explicitly or balanced by cost: a layer costs 1 and
    stage 0 also ``first_stage_extra`` (the LM head and sampling, which run with the driver), so
    stage 0 takes fewer layers; the others as even as the count allows (earlier ones take the
    remainder). With no extra cost this is the plain split by layer count."""
    if sizes is None:
        first = math.ceil((num_layers - first_stage_extra * (stages - 1)) / stages)
        first = min(max(first, 1), num_layers - (stages - 1)) if stages > 1 else num_layers
        base, extra = divmod(num_layers - first, max(stages - 1, 1))
        sizes = [first] + [base + (s < extra) for s in range(stages - 1)]
    if len(sizes) != stages or sum(sizes) != num_layers or min(sizes) < 1:
        raise ValueError(f"pipeline stage sizes {sizes} must be {stages} positive counts summing to {num_layers}")
    starts = [sum(sizes[:s]) for s in range(stages)]
    return [range(a, a + n) for a, n in zip(starts, sizes, strict=True)]


def rebalanced_stage_sizes(work_s: list[float], ranges: list[range], tp: int = 1) -> list[int]:
    """Stage sizes that would even out measured work (rank order, ``tp`` ranks a stage): a layer's
    cost comes from the later stages, which run only layers, and stage 0's extra (the LM head and
    sampling) from what its layers do not explain."""
    sizes = [len(r) for r in ranges]
    stage_work = [sum(work_s[s * tp:(s + 1) * tp]) / tp for s in range(len(ranges))]
    if len(ranges) < 2 or sum(stage_work[1:]) <= 0:
        return sizes
    per_layer = sum(stage_work[1:]) / sum(sizes[1:])
    extra = max(0.0, stage_work[0] - sizes[0] * per_layer) / per_layer
    return [len(r) for r in split_layers(sum(sizes), len(ranges), first_stage_extra=extra)]


def lm_head_cost_in_layers(config: ModelConfig) -> float:
    """The LM head's weights over one decoder layer's: a decode step reads every weight once, so
    its time follows the weights (SmolLM2-135M: 28.3M against 3.5M, so 8 layers)."""
    attention = config.hidden_size * config.head_dim * 2 * (config.num_attention_heads + config.num_key_value_heads)
    mlp = 3 * config.hidden_size * config.intermediate_size
    return config.vocab_size * config.hidden_size / (attention + mlp)


def stage_keeps(name: str, layers: range, first: bool, last: bool) -> bool:
    """Whether a checkpoint tensor (Hugging Face name) belongs to this stage."""
    if name.startswith("model.layers."):
        return int(name.split(".")[2]) in layers
    if name.startswith(("model.embed_tokens.", "lm_head.")):
        return first
    if name.startswith("model.norm."):
        return last
    return True


def stage_pruner(layers: range, first: bool, last: bool) -> Callable[[LlamaForCausalLM], None]:
    """Drops, before loading, the modules this stage does not run (their memory is never touched)."""

    def prune(model: LlamaForCausalLM) -> None:
        inner = model.model
        for i in range(len(inner.layers)):
            if i not in layers:
                inner.layers[i] = nn.Identity()
        if not first:
            _drop(inner, "embed_tokens")
            _drop(model, "lm_head")
        if not last:
            _drop(inner, "norm")

    return prune


def _drop(module: nn.Module, name: str) -> None:
    """Replaces a submodule this stage never calls by None (its name stays, its memory goes)."""
    module.register_module(name, None)


class StageFiles:
    """A model's files seen by one stage: only the tensors it holds."""

    def __init__(self, files: Any, keep: Callable[[str], bool]) -> None:
        self.files, self.keep = files, keep
        self.path, self.name, self.gguf = files.path, files.name, files.gguf

    def iter_weights(self, keep_quantized: bool = False) -> Iterator[tuple[str, Any]]:
        return ((n, t) for n, t in self.files.iter_weights(keep_quantized) if self.keep(n))

    def num_tensors(self) -> int | None:
        return None

    def tensor_types(self) -> dict[str, Any]:
        return {n: t for n, t in self.files.tensor_types().items() if self.keep(n)}


class PipelineStage:
    """Called like the model by ``ModelRunner.forward``; receives from the previous stage and sends
    to the next one inside the call."""

    def __init__(self, model: LlamaForCausalLM, layers: range, first: bool, last: bool,
                 recv: ShmRing | GlooLink | None, send: ShmRing | GlooLink | None) -> None:
        self.model, self.layers, self.first, self.last = model, layers, first, last
        self.recv, self.send = recv, send
        self.hidden_size = model.config.hidden_size
        self.dtype = model.config.dtype
        self.attention_backend = model.attention_backend

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list,
                 metadata: AttentionMetadata) -> torch.Tensor | None:
        inner = self.model.model
        if self.first:
            x, residual = inner.embed_tokens(input_ids), None
        else:
            assert self.recv is not None, "a later stage receives its input"
            shape = (input_ids.shape[0], self.hidden_size)
            x, residual = self.recv.recv([shape, shape], self.dtype)  # activations of the previous stage
        rope = inner.rotary.step(positions, x.dtype)
        for i, kv_cache in zip(self.layers, kv_caches, strict=True):
            x, residual = inner.layers[i](rope, x, residual, kv_cache, metadata)
        if not self.last:
            assert self.send is not None and residual is not None, "an earlier stage sends its output on"
            self.send.send([x, residual])
            return None
        x, _ = inner.norm(x, residual)
        if self.send is not None:  # back to the driver, which samples
            self.send.send([x])
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)
