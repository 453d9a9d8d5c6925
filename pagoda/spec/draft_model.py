"""The draft model of ``{"method": "draft_model"}``: another checkpoint with the target's vocabulary,
or the target itself cut to its first layers (a self-draft that shares the target's weights)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import ModelConfig
from pagoda.spec.config import SpeculativeConfig
from pagoda.tokenizer import Tokenizer

KVCache = tuple[torch.Tensor, torch.Tensor]


class TruncatedDraft:
    """A Llama-family causal LM run through its first ``num_layers`` decoder layers only, then its
    final norm and LM head: the early-exit draft of layer-skipping self-speculation (Zhang et al.
    2023, "Draft & Verify"; Elhoushi et al. 2024, LayerSkip), without their training. It holds
    references to the model's modules, not copies: no weight memory of its own."""

    def __init__(self, model: Any, num_layers: int) -> None:
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "layers"):
            raise ValueError(f"speculative_config.draft_num_layers: cannot cut {type(model).__name__} into layers")
        if not 1 <= num_layers <= len(inner.layers):
            raise ValueError(f"speculative_config.draft_num_layers must be between 1 and the model's "
                             f"{len(inner.layers)} layers, got {num_layers}")
        self.model = model  # a StepModel
        self.inner: Any = inner
        self.num_layers = num_layers
        self.attention_backend: type[AttentionBackend] = self.model.attention_backend

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                 metadata: AttentionMetadata) -> torch.Tensor:
        return self.inner(input_ids, positions, kv_caches, metadata, num_layers=self.num_layers)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)


def load_draft(config: SpeculativeConfig, target: nn.Module, target_config: ModelConfig, target_path: str,
           target_tokenizer: Tokenizer, device: torch.device, quantization: str | None
           ) -> tuple[Any, ModelConfig]:
    """The draft (a ``StepModel``) and its config (its layer count is that of its KV cache).

    ``quantization``: the engine's argument ("auto" loads a GGUF draft packed, as the target).
    A draft whose vocabulary differs from the target's is refused, naming ``speculative_config.model``.
    """
    from pagoda.weights.model_loader import ModelFiles, load_model, resolve_quantization

    same = config.model is None or os.path.realpath(config.model) == os.path.realpath(target_path)
    model: Any
    if same:
        model, draft_config = target, target_config
    else:
        assert config.model is not None
        try:
            files = ModelFiles(config.model)
        except FileNotFoundError as exc:
            raise ValueError(f"speculative_config.model: {exc}") from None
        draft_config = replace(ModelConfig.from_hf_config(files.hf_config(), target_config.dtype, None),
                               max_model_len=target_config.max_model_len,  # positions the target may reach
                               attention_backend=target_config.attention_backend,
                               deterministic=target_config.deterministic)
        _check_vocabulary(config.model, files.tokenizer(), draft_config, target_tokenizer, target_config)
        model = load_model(files, draft_config, device, quantization=resolve_quantization(quantization, files, device),
                           show_progress=False)
    if config.draft_num_layers is not None:
        model = TruncatedDraft(model, config.draft_num_layers)
        draft_config = replace(draft_config, num_hidden_layers=config.draft_num_layers)
    elif same:
        raise ValueError("speculative_config.model is the target model itself: give draft_num_layers "
                         "(how many of its layers the draft keeps), or a smaller model")
    return model, draft_config


def _check_vocabulary(path: str, tokenizer: Tokenizer, config: ModelConfig, target_tokenizer: Tokenizer,
                      target_config: ModelConfig) -> None:
    """Proposals are token ids: the draft's must mean what the target's mean."""
    if config.vocab_size != target_config.vocab_size:
        raise ValueError(f"speculative_config.model {path!r} has a vocabulary of {config.vocab_size} tokens, "
                         f"the target {target_config.vocab_size}: a draft must share the target's tokenizer")
    if tokenizer.backend.get_vocab() != target_tokenizer.backend.get_vocab():
        raise ValueError(f"speculative_config.model {path!r} has another tokenizer than the target (its token "
                         f"strings differ): a draft must share the target's tokenizer")
