"""Applying a token bitmask (one bit per token id, int32 words) to a logits row, without a Python loop."""

from __future__ import annotations

import numpy as np
import torch

from pagoda.kernels import cpu_kernels


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def _bytes(bitmask: np.ndarray) -> np.ndarray:
    # little-endian words, so byte t // 8 holds token t (a no-op view on little-endian hosts)
    return bitmask.astype("<i4", copy=False).view(np.uint8)


def allowed_token_ids(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """The ids whose bit is set (for tests and debugging)."""
    bits = np.unpackbits(_bytes(bitmask), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits)


def apply_token_bitmask_(logits: torch.Tensor, bitmask: np.ndarray) -> torch.Tensor:
    """Sets to -inf, in place, every entry of the 1-D ``logits`` whose bit is clear; ids past the
    bitmask (a model vocabulary padded beyond the tokenizer's) are disallowed too.

    Bit t is bit ``t % 32`` of word ``t // 32``, i.e. bit ``t % 8`` of byte ``t // 8`` of the
    little-endian words, so numpy's little-endian unpackbits of the inverted bytes is the ban mask.
    CPU rows go through Pagoda's C++ kernel (~3 us for a 49k vocabulary), else numpy (~25 us);
    neither wakes torch's intra-op threads (which costs milliseconds on a loaded 2-core host).
    """
    if logits.is_cuda and logits.is_contiguous():  # Triton: one launch, the mask copied over once
        from pagoda.kernels.triton.token_bitmask import apply_token_bitmask_ as apply_on_gpu

        words = torch.from_numpy(bitmask.astype(np.int32, copy=False)).reshape(1, -1)
        apply_on_gpu(logits.view(1, -1), words.to(logits.device, non_blocking=True))
        return logits
    if cpu_kernels.use_for(logits) and logits.is_contiguous():
        torch.ops.pagoda.apply_token_bitmask_(logits, torch.from_numpy(bitmask.astype(np.int32, copy=False)))
        return logits
    n = min(logits.shape[0], bitmask.size * 32)
    banned = np.unpackbits(np.invert(_bytes(bitmask)), count=n, bitorder="little").view(np.bool_)
    if _numpy_editable(logits):
        row = logits.numpy()
        np.putmask(row[:n], banned, -np.inf)
        row[n:] = -np.inf
        return logits
    logits[:n].masked_fill_(torch.from_numpy(banned).to(logits.device), float("-inf"))
    logits[n:] = float("-inf")
    return logits


def allow_only_(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    """Keeps one token's logit, -inf elsewhere (a forced token: no mask computation needed)."""
    row = logits.numpy() if _numpy_editable(logits) else logits
    keep = float(row[token_id])
    row[:] = float("-inf")
    row[token_id] = keep
    return logits


def _numpy_editable(logits: torch.Tensor) -> bool:
    return logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64) and not logits.requires_grad
