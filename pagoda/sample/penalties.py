"""Repetition, frequency and presence penalties, in place on float32 logits [rows, vocab], over
only the (row, token) pairs that occur."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def apply_repetition_penalty(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                             penalty: torch.Tensor) -> None:
    """HF/CTRL: for every (row, token) pair seen (duplicates are fine), a positive logit is divided
    by the row's penalty and a negative one multiplied by it. ``penalty`` is per row."""
    vocab = logits.shape[1]
    keys = torch.unique(_keys(rows, tokens, vocab))
    flat = logits.view(-1)
    scores, p = flat[keys], penalty[keys // vocab]
    flat[keys] = torch.where(scores < 0, scores * p, scores / p)


def apply_frequency_presence_penalties(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                                       frequency: torch.Tensor, presence: torch.Tensor) -> None:
    """OpenAI: logit -= count * frequency + (count > 0) * presence, counting the (row, token) pairs."""
    vocab = logits.shape[1]
    keys, counts = torch.unique(_keys(rows, tokens, vocab), return_counts=True)
    row = keys // vocab
    logits.view(-1).index_add_(0, keys, -(counts * frequency[row] + presence[row]))


def token_pairs(rows: list[int], seqs: list[Sequence[int]], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel (row, token) tensors from per-row token sequences, with no Python loop over tokens."""
    tensors = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
    # (torch.repeat_interleave would do, but its CPU kernel takes ~20 ms even on a few tokens)
    row_ids = torch.cat([torch.full((len(t),), r, dtype=torch.long) for r, t in zip(rows, tensors, strict=True)])
    return row_ids.to(device), torch.cat(tensors).to(device)


def _keys(rows: torch.Tensor, tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Flat indices into [rows, vocab] logits; ids outside the vocabulary (a tokenizer's added
    tokens past the model's head) are left out, as HF does."""
    inside = (tokens >= 0) & (tokens < vocab)
    return rows[inside] * vocab + tokens[inside]
