"""Speculative sampling keeps the target distribution: at temperature 0.8 with top-p, top-k,
a repetition penalty and logit_bias, the tokens of unseeded requests with speculation and without
are one distribution (a chi-square test on each output position and on the pair of the first two),
while many proposals are accepted."""

from __future__ import annotations

from collections import Counter

import torch

from pagoda import LLM, SamplingParams
from pagoda.spec.verification import num_accepted

N = 1200  # samples per side


def chi_square_p(a: Counter, b: Counter, min_expected: float = 5.0) -> float:
    """p-value of the two-sample chi-square test of homogeneity (rare categories pooled)."""
    na, nb = sum(a.values()), sum(b.values())
    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    rows, other = [], [0, 0]
    for k in keys:
        if (a[k] + b[k]) * min(na, nb) / (na + nb) >= min_expected:
            rows.append((a[k], b[k]))
        else:
            other[0] += a[k]
            other[1] += b[k]
    if sum(other):
        rows.append((other[0], other[1]))
    stat = 0.0
    for x, y in rows:
        total = x + y
        for observed, n in ((x, na), (y, nb)):
            expected = total * n / (na + nb)
            stat += (observed - expected) ** 2 / expected
    df = len(rows) - 1
    if df == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_num_accepted():
    assert num_accepted([5, 6, 7], [5, 6, 9, 1], stop_token_ids=()) == 2
    assert num_accepted([5, 6, 7], [5, 6, 7, 1], stop_token_ids=()) == 3
    assert num_accepted([5, 6, 7], [4, 6, 7, 1], stop_token_ids=()) == 0
    assert num_accepted([5, 2, 7], [5, 2, 7, 1], stop_token_ids={2}) == 1  # a kept stop token ends the step


def test_chi_square_same_distribution(tiny_llama_dir):
    # a repetitive prompt and a bias towards its tokens: proposals are made and often right
    prompt = [41] * 24
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, max_tokens=4, ignore_eos=True,
                            repetition_penalty=1.05, logit_bias={41: 6.0, 42: 4.0, 40: 3.0})
    common = dict(dtype="float32", num_kv_blocks=2048, max_num_seqs=256, enable_prefix_caching=True,
                  show_progress=False)
    plain = LLM(tiny_llama_dir, seed=1, **common)
    spec = LLM(tiny_llama_dir, seed=2, speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                                           "prompt_lookup_min": 1, "adaptive": False}, **common)
    a = [tuple(o.outputs[0].token_ids) for o in plain.generate([prompt] * N, params, use_tqdm=False)]
    b = [tuple(o.outputs[0].token_ids) for o in spec.generate([prompt] * N, params, use_tqdm=False)]
    stats = spec.engine.get_stats().spec
    assert stats.num_accepted_tokens > N // 6  # speculation carried a fair part of the tokens
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens  # and rejected some too
    for pos in range(4):
        p = chi_square_p(Counter(t[pos] for t in a), Counter(t[pos] for t in b))
        assert p > 1e-3, (pos, p)
    assert chi_square_p(Counter(t[:2] for t in a), Counter(t[:2] for t in b)) > 1e-3
    # the test can tell distributions apart: plain sampling at another temperature fails it
    hot = [tuple(o.outputs[0].token_ids) for o in plain.generate(
        [prompt] * N, SamplingParams(**{**_fields(params), "temperature": 1.3}), use_tqdm=False)]
    assert min(chi_square_p(Counter(t[pos] for t in a), Counter(t[pos] for t in hot)) for pos in range(4)) < 1e-3


def _fields(params: SamplingParams) -> dict:
    from dataclasses import fields

    return {f.name: getattr(params, f.name) for f in fields(params) if f.init}
