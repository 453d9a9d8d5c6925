"""Prompt lookup: propose the tokens that followed the latest earlier occurrence of a request's
last n tokens, in its own prompt and output (Saxena's prompt-lookup decoding; vLLM's "ngram")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class _NgramIndex:
    """n-gram -> the end (exclusive) of its latest occurrence, for n-grams ending before ``size``."""

    size: int = 0
    ends: dict[tuple[int, ...], int] = field(default_factory=dict)


class NgramProposer:
    """Keeps one incremental n-gram index per sequence, so a step costs a few dictionary look-ups
    per request whatever the sequence's length. Sequences only grow while indexed; ``forget`` drops
    one (a sequence that shrank is re-indexed from scratch)."""

    def __init__(self, lookup_min: int, lookup_max: int) -> None:
        self.lookup_min = lookup_min
        self.lookup_max = lookup_max
        self._indexes: dict[str, _NgramIndex] = {}

    def propose(self, key: str, token_ids: Sequence[int], k: int) -> list[int]:
        """``k`` tokens that followed the longest (then latest) earlier match of the sequence's
        suffix; empty when there is none."""
        n_tokens = len(token_ids)
        if k <= 0 or n_tokens < self.lookup_min + 1:
            return []
        index = self._indexes.get(key)
        if index is None or index.size > n_tokens:
            index = self._indexes[key] = _NgramIndex()
        # n-grams ending at positions < n_tokens - 1: the suffix itself must not match itself
        for end in range(max(index.size, self.lookup_min), n_tokens):
            for n in range(self.lookup_min, min(self.lookup_max, end) + 1):
                index.ends[tuple(token_ids[end - n:end])] = end
        index.size = max(index.size, n_tokens)
        for n in range(min(self.lookup_max, n_tokens - 1), self.lookup_min - 1, -1):
            found = index.ends.get(tuple(token_ids[n_tokens - n:]))
            if found is not None and found < n_tokens:
                return _copy_from(token_ids, found, k)
        return []

    def forget(self, key: str) -> None:
        self._indexes.pop(key, None)


def _copy_from(token_ids: Sequence[int], start: int, k: int) -> list[int]:
    """``k`` tokens from ``start`` on, the copy running on into its own output past the end (as an
    LZ77 copy does): a match at distance d predicts a repeat of period d."""
    n_tokens = len(token_ids)
    out = list(token_ids[start:start + k])
    while len(out) < k:
        out.append(out[len(out) - (n_tokens - start)])
    return out
