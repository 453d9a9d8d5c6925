"""Grammar bitmask apply: sets to -inf every logit whose bit is clear (structured outputs).

Bit t of a row's mask is bit ``t % 32`` of int32 word ``t // 32`` (the llguidance / xgrammar layout of
``pagoda.structured.token_bitmask``); ids past the mask's words (a vocabulary padded beyond the
tokenizer's) are disallowed. Elementwise: batch-invariant.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton import check_device


@triton.jit
def _apply_bitmask_kernel(logits_ptr, bitmask_ptr, stride_l, stride_b, VOCAB: tl.constexpr, WORDS: tl.constexpr,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0)
    ids = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    word_index = ids // 32
    words = tl.load(bitmask_ptr + row * stride_b + word_index, mask=(ids < VOCAB) & (word_index < WORDS), other=0)
    banned = ((words >> (ids % 32)) & 1) == 0
    tl.store(logits_ptr + row * stride_l + ids, tl.full([BLOCK], float("-inf"), tl.float32),
             mask=(ids < VOCAB) & banned)


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor, *, block: int = 1024) -> torch.Tensor:
    """logits [B, V] (rows contiguous), bitmask [B, W] int32 on the same device; in place."""
    check_device(logits)
    rows, vocab = logits.shape
    if rows:
        assert logits.stride(1) == 1 and bitmask.dtype == torch.int32 and bitmask.stride(1) == 1
        _apply_bitmask_kernel[(rows, triton.cdiv(vocab, block))](
            logits, bitmask, logits.stride(0), bitmask.stride(0), VOCAB=vocab, WORDS=bitmask.shape[1], BLOCK=block)
    return logits


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[1]
    ids = torch.arange(vocab)
    words = bitmask.long().cpu()
    padded = torch.zeros(words.shape[0], vocab // 32 + 1, dtype=torch.int64)
    n = min(words.shape[1], padded.shape[1])
    padded[:, :n] = words[:, :n]
    allowed = ((padded[:, ids // 32] >> (ids % 32)) & 1).bool()
    allowed &= (ids < 32 * words.shape[1]).unsqueeze(0)
    return logits.cpu().masked_fill(~allowed, float("-inf"))
