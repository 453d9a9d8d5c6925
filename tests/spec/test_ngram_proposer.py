"""The n-gram proposer against a brute-force reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda.spec.ngram_proposer import NgramProposer


def reference(tokens: list[int], k: int, lo: int, hi: int) -> list[int]:
    """The longest suffix n-gram (hi..lo) with an earlier occurrence; its latest such occurrence;
    the k tokens after it, the copy running on into itself."""
    n_tokens = len(tokens)
    for n in range(min(hi, n_tokens - 1), lo - 1, -1):
        suffix = tokens[n_tokens - n:]
        for end in range(n_tokens - 1, n - 1, -1):
            if tokens[end - n:end] == suffix:
                ext = list(tokens)
                for i in range(k):
                    ext.append(ext[end + i])
                return ext[n_tokens:]
    return []


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.integers(0, 4), min_size=0, max_size=60), k=st.integers(1, 6),
       lo=st.integers(1, 3), extra=st.integers(0, 3), cut=st.integers(0, 60))
def test_matches_reference_incrementally(tokens, k, lo, extra, cut):
    hi = lo + extra
    proposer = NgramProposer(lo, hi)
    # an incremental index: asked at a prefix first, then at the full sequence
    assert proposer.propose("r", tokens[:cut], k) == reference(tokens[:cut], k, lo, hi)
    assert proposer.propose("r", tokens, k) == reference(tokens, k, lo, hi)


def test_examples():
    p = NgramProposer(2, 3)
    # "the cat sat on the cat" -> suffix [the, cat] occurred at 0..2: propose what followed
    assert p.propose("a", [1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert p.propose("b", [1, 2, 3, 4, 5], 3) == []  # no earlier match
    assert p.propose("c", [7, 7, 7], 4) == [7, 7, 7, 7]  # a run repeats
    p.forget("a")
    assert p.propose("a", [1, 2, 9, 1, 2], 2) == [9, 1]
