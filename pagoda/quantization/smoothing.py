"""SmoothQuant for W8A8: move the activations' outlier channels into the weights before quantizing.

Per-token int8 quantization of an activation row spends its 255 levels on the row's largest entry, and a few
input channels of a transformer's linears carry entries tens of times larger than the rest, so the other
channels keep only a few levels. SmoothQuant (Xiao et al., 2023) divides input channel j by
``s_j = amax_x(j) ** ALPHA / amax_w(j) ** (1 - ALPHA)`` and multiplies the weight's column j by it: the product
is unchanged, the activation is flatter and the weight, quantized per output channel, takes the difference.

``amax_x`` comes from one calibration forward of the dense model over ``data/calibration.txt`` (prose, code,
JSON, dialogue; not any text the quality bench scores), run where the model was loaded (every tensor-parallel
rank runs it at once, each on its own shard). A pipeline stage holds only part of the model and is quantized
without smoothing.

ALPHA was chosen on a development text (this repository's README, 4096 tokens; perplexity over bf16 with alpha
0.4 / 0.5 / 0.6 / 0.7: +0.56% / +0.98% / +0.83% / +1.39%), not on the product brief that `pagoda bench quality`
scores; see the README's W8A8 section for that figure.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers.linear import LinearBase
from pagoda.tokenizer import Tokenizer

if TYPE_CHECKING:
    from pagoda.models.llama import KVCache, LlamaDecoderLayer, LlamaForCausalLM

ALPHA = 0.4
CALIBRATION_TOKENS = 1024
BLOCK_SIZE = 16  # of the calibration forward's own KV cache
MIN_AMAX = 1e-5  # channels that never fire keep a finite scale


def calibration_token_ids(tokenizer: Tokenizer, max_tokens: int = CALIBRATION_TOKENS) -> list[int]:
    text = resources.files("pagoda.quantization").joinpath("data/calibration.txt").read_text(encoding="utf-8")
    return tokenizer.encode(text, add_special_tokens=False)[:max_tokens]


@torch.inference_mode()
def input_amax(model: LlamaForCausalLM, token_ids: list[int]) -> dict[str, torch.Tensor]:
    """Each linear layer's largest |input| per input channel (float32 [in_features]) over one prefill of
    ``token_ids`` (as many as the model's context holds) through ``model`` (a ``LlamaForCausalLM``), keyed by
    the layer's module name; the LM head's (the final norm's output) under ``"lm_head"``."""
    token_ids = token_ids[: model.config.max_model_len]
    amax: dict[str, torch.Tensor] = {}

    def record(name: str):  # noqa: ANN202 - a forward pre-hook
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float().abs().amax(0)
            amax[name] = torch.maximum(amax[name], x) if name in amax else x
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, LinearBase)]
    try:
        hidden = model(*_prefill_inputs(model, token_ids))
        amax["lm_head"] = hidden.float().abs().amax(0)
    finally:
        for h in hooks:
            h.remove()
    bad = [name for name, a in amax.items() if not torch.isfinite(a).all()]
    if bad:
        raise RuntimeError(f"SmoothQuant calibration: non-finite activations at the input of {bad[0]}")
    return amax


def _prefill_inputs(model: LlamaForCausalLM, token_ids: list[int]
                    ) -> tuple[torch.Tensor, torch.Tensor, list[KVCache], AttentionMetadata]:
    """(input_ids, positions, kv_caches, metadata) of one sequence's whole prompt, in a KV cache of its own."""
    config = model.config
    device = next(model.parameters()).device
    attn = cast("LlamaDecoderLayer", model.model.layers[0]).self_attn
    n = len(token_ids)
    blocks = -(-n // BLOCK_SIZE)
    shape = model.attention_backend.kv_cache_shape(blocks, BLOCK_SIZE, attn.num_kv_heads, attn.head_dim)
    kv_caches = [(torch.zeros(shape, dtype=config.dtype, device=device),
                  torch.zeros(shape, dtype=config.dtype, device=device)) for _ in model.model.layers]
    metadata = AttentionMetadata(
        slot_mapping=torch.arange(n, device=device), query_start_loc=torch.tensor([0, n], device=device),
        seq_lens=torch.tensor([n], device=device), block_tables=torch.arange(blocks, device=device)[None],
        num_decodes=0, max_seq_len=n, query_start_loc_list=[0, n], seq_lens_list=[n], num_prompt_rows_list=[n])
    ids = torch.tensor(token_ids, device=device)
    return ids, torch.arange(n, device=device), kv_caches, metadata


def smoothing_scales(amax_x: torch.Tensor, weight: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """s [in_features] (float32) for a weight [out, in]: x / s times (w * s)^T is x w^T."""
    amax_w = weight.detach().float().abs().amax(0).clamp(min=MIN_AMAX)
    return (amax_x.float().clamp(min=MIN_AMAX) ** alpha / amax_w ** (1 - alpha)).clamp(min=MIN_AMAX)
