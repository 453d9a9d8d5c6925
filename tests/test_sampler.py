"""Sampler: each transformation against transformers' processors, draws against the processed
softmax, seeds, min_tokens, logit_bias and logprobs."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pagoda.sample.row_ops import argmax, count_above, mass_above, sample_from_probs, topk
from pagoda.sample.sampler import Sampler, SamplingBatch
from pagoda.sample.truncation import Truncation
from pagoda.sampling_params import SamplingParams

EOS = 2


def make_batch(params: list[SamplingParams], prompts=None, outputs=None, generators=None) -> SamplingBatch:
    n = len(params)
    return SamplingBatch(params=params,
                         prompt_token_ids=prompts or [[1, 5, 7]] * n,
                         output_token_ids=outputs or [[]] * n,
                         generators=generators or [None] * n)


def hf_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The reference distribution: transformers' warpers in vLLM's order, then softmax."""
    chain = LogitsProcessorList()
    if p.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(p.temperature))
    if p.min_p > 0:
        chain.append(MinPLogitsWarper(p.min_p))
    if p.top_k > 0:
        chain.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        chain.append(TopPLogitsWarper(p.top_p))
    return chain(None, logits.clone()).softmax(-1)


def normalise(probs: torch.Tensor) -> torch.Tensor:
    return probs / probs.sum(-1, keepdim=True)


def our_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The distribution our sampler draws each row from: softmax after temperature, zero wherever
    its Truncation does not keep the token (asked of every token of the vocabulary)."""
    probs = (logits / p.temperature).softmax(-1)
    truncation = Truncation.of(probs, [p] * len(probs))
    if truncation is None:
        return probs
    out = torch.empty_like(probs)
    vocab = probs.shape[1]
    for i in range(len(probs)):
        row = Truncation(truncation.floor[i].expand(vocab),
                         None if truncation.need is None else truncation.need[i].expand(vocab))
        out[i] = probs[i] * row.keeps(probs[i].expand(vocab, -1), probs[i])
    return normalise(out)


def chi2_critical(df: int, alpha: float) -> float:
    """Upper-alpha chi-square quantile (Wilson-Hilferty; good to a few percent in the tail)."""
    z = float(torch.special.ndtri(torch.tensor(1.0 - alpha, dtype=torch.float64)))
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def assert_draws_follow(ids: list[int], expected: torch.Tensor) -> None:
    """Draws ``ids`` never leave the support of ``expected`` and pass a chi-square test against it."""
    n = len(ids)
    observed = torch.bincount(torch.tensor(ids), minlength=len(expected)).double()
    keep = expected > 0
    assert observed[~keep].sum() == 0
    chi2 = ((observed[keep] - n * expected[keep]) ** 2 / (n * expected[keep])).sum().item()
    assert chi2 < chi2_critical(int(keep.sum()) - 1, 1e-6)


# ---- each transformation against transformers ----

@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_hf(penalty):
    torch.manual_seed(0)
    logits = torch.randn(3, 300) * 4
    prompts = [[5, 9, 9, 200], [0, 300, 301], [17, 18]]  # 300, 301: past the head, ignored
    outputs = [[9, 30, 30], [299, 0, 1], []]
    params = [SamplingParams(repetition_penalty=penalty)] * 2 + [SamplingParams()]
    ours = Sampler({EOS}).process_logits(logits, make_batch(params, prompts, outputs))
    for i in range(2):
        ids = torch.tensor([prompts[i] + outputs[i]])
        ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits[i:i + 1].clone())[0]
        assert torch.equal(ours[i], ref)
    assert torch.equal(ours[2], logits[2])  # a row without the penalty is untouched


def test_frequency_and_presence_penalties_follow_openai():
    torch.manual_seed(1)
    logits = torch.randn(2, 50)
    prompts = [[3, 3, 4], [8]]
    outputs = [[4, 4, 4, 7, 9, 9], [8, 1]]
    params = [SamplingParams(frequency_penalty=0.5, presence_penalty=-0.25),
              SamplingParams(presence_penalty=1.5)]
    ours = Sampler({EOS}).process_logits(logits, make_batch(params, prompts, outputs))
    for i, p in enumerate(params):
        ref = logits[i].clone()
        for tok, count in Counter(outputs[i]).items():  # output tokens only, never the prompt
            ref[tok] -= count * p.frequency_penalty + p.presence_penalty
        assert torch.allclose(ours[i], ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("p", [
    SamplingParams(temperature=0.6),
    SamplingParams(temperature=1.7),
    SamplingParams(min_p=0.05),
    SamplingParams(top_k=7),
    SamplingParams(top_k=150, temperature=0.8),
    SamplingParams(top_p=0.9),
    SamplingParams(top_p=0.5, temperature=1.3),
    SamplingParams(top_p=0.97),
    SamplingParams(top_k=40, top_p=0.8),
    SamplingParams(temperature=0.7, min_p=0.02, top_k=100, top_p=0.9),
    SamplingParams(top_p=1e-9),  # 1 - top_p rounds to 1 in HF: only the top token is left
], ids=lambda p: ",".join(f"{k}={v}" for k, v in vars(p).items() if v != getattr(SamplingParams(), k)))
def test_truncation_matches_hf_warpers(p):
    torch.manual_seed(2)
    logits = torch.randn(4, 1500) * 3
    ours = our_probs(logits, p)
    for i in range(4):
        ref = hf_probs(logits[i:i + 1], p)[0]
        assert torch.equal(ours[i] > 0, ref > 0), f"kept set differs in row {i}"
        assert torch.allclose(ours[i], ref, rtol=1e-5, atol=1e-7)


def test_truncation_of_mixed_rows_matches_hf():
    """Rows with different settings in one call: each matches its own reference."""
    torch.manual_seed(3)
    params = [SamplingParams(), SamplingParams(top_p=0.8), SamplingParams(top_k=5),
              SamplingParams(min_p=0.1, temperature=0.5), SamplingParams(top_k=20, top_p=0.6)]
    logits = torch.randn(len(params), 2000) * 2
    probs = (logits / torch.tensor([p.temperature for p in params])[:, None]).softmax(-1)
    truncation = Truncation.of(probs, params)
    for i, p in enumerate(params):
        ref = hf_probs(logits[i:i + 1], p)[0] > 0
        row = Truncation(truncation.floor[i].expand(2000), truncation.need[i].expand(2000))
        assert torch.equal(row.keeps(probs[i].expand(2000, -1), probs[i]), ref)


def test_truncation_keeps_every_token_tied_at_the_cut():
    """bfloat16 logits tie often: HF keeps an arbitrary part of a tie at the cut, we keep all of it."""
    torch.manual_seed(4)
    logits = (torch.randn(1, 3000) * 2).bfloat16().float()
    for p in (SamplingParams(top_p=0.9), SamplingParams(top_k=100), SamplingParams(min_p=0.1, top_p=0.7)):
        ref = hf_probs(logits, p)[0]
        ours = our_probs(logits, p)[0]
        assert torch.all(ours[ref > 0] > 0)
        extra = (ours > 0) & (ref == 0)
        smallest = logits[0][ref > 0].min()
        assert torch.all(logits[0][extra] == smallest)


def test_mass_above_equals_sorted_reference():
    torch.manual_seed(5)
    probs = (torch.randn(4, 49152) * 3).softmax(-1)
    level = probs.sort(-1, descending=True).values[:, [0, 3, 2000, 40000]].diagonal()  # sparse and dense rows
    ref = torch.stack([probs[i][probs[i] > level[i]].double().sum() for i in range(4)])
    assert torch.allclose(mass_above(probs, level).double(), ref, rtol=1e-5)
    assert torch.allclose(mass_above(probs, torch.zeros(4)), probs.sum(-1))


def test_count_above_equals_full_count_on_sparse_and_dense_rows():
    torch.manual_seed(5)
    x = torch.randn(4, 49152) * 3
    level = torch.stack([x[0].max() - 0.5, x[1].median(), x[2].min() - 1, x[3].max()])
    ref = (x > level[:, None]).sum(-1)
    assert torch.equal(count_above(x, level), ref)
    assert torch.equal(count_above(x[:, :1000], level), (x[:, :1000] > level[:, None]).sum(-1))  # padded


@pytest.mark.parametrize("vocab", [20, 1000, 4224, 49152])
def test_blocked_argmax_equals_torch_argmax(vocab):
    torch.manual_seed(vocab)
    x = (torch.randn(5, vocab) * 2).round()  # many ties: the first index of the maximum wins
    x[1] = float("-inf")
    x[2, -1] = 100.0
    assert torch.equal(argmax(x), x.argmax(-1))


@pytest.mark.parametrize("k", [1, 5, 50, 3000])
def test_blocked_topk_equals_torch_topk(k):
    torch.manual_seed(k)
    x = torch.randn(3, 49152) * 3
    values, ids = topk(x, k)
    ref_values, ref_ids = x.topk(k)
    assert torch.equal(values, ref_values) and torch.equal(ids, ref_ids)
    assert torch.equal(x.gather(1, ids), values)


# ---- draws ----

def test_draws_follow_processed_softmax():
    """20k draws (unseeded rows, shared generator) against the HF-processed distribution; the
    same counts are far from the unprocessed softmax, so a sampler that skipped or misapplied a
    warper would fail."""
    torch.manual_seed(5)
    logits = torch.randn(1, 30) * 2
    p = SamplingParams(temperature=0.8, top_k=12, top_p=0.95, min_p=0.01)
    expected = hf_probs(logits, p)[0].double()
    n = 20000
    sampler = Sampler({EOS}, torch.Generator().manual_seed(0))
    ids = sampler(logits.expand(n, -1), make_batch([p] * n)).token_ids
    observed = torch.bincount(torch.tensor(ids), minlength=30).double()
    assert observed[expected == 0].sum() == 0  # nothing outside the kept set is ever drawn
    keep = expected > 0
    chi2 = ((observed[keep] - n * expected[keep]) ** 2 / (n * expected[keep])).sum().item()
    assert chi2 < chi2_critical(int(keep.sum()) - 1, 1e-6)
    tv = 0.5 * (observed / n - expected).abs().sum().item()
    assert tv < 0.02
    assert 0.5 * (logits[0].softmax(-1).double() - expected).abs().sum() > 0.1  # the test has power


@pytest.mark.parametrize("p", [SamplingParams(top_k=5), SamplingParams(top_p=0.2, temperature=0.9),
                               SamplingParams(min_p=0.5, top_p=0.6)], ids=["top_k", "top_p", "min_p+top_p"])
def test_draws_that_are_mostly_rejected_still_follow_the_kept_set(p):
    """A flat distribution puts most of the mass outside what is kept, so most rows draw again
    (often several times): the result must still be the kept set's renormalised distribution."""
    torch.manual_seed(6)
    vocab, n = 200, 20000
    logits = torch.randn(1, vocab) * 0.5
    expected = hf_probs(logits, p)[0].double()
    assert expected[expected > 0].numel() < vocab // 2
    ids = Sampler({EOS}, torch.Generator().manual_seed(1))(logits.expand(n, -1), make_batch([p] * n)).token_ids
    assert_draws_follow(ids, expected)


class SetMask:
    """A mask allowing ``allowed`` that can verify draws (as grammar masks do); counts its checks."""

    def __init__(self, allowed: list[int]) -> None:
        self.allowed = allowed
        self.kept = self.refused = 0

    def __call__(self, _ids, row):
        out = torch.full_like(row, float("-inf"))
        out[self.allowed] = row[self.allowed]
        return out

    def verify_draw(self, _ids, token):
        if len(self.allowed) == 1:
            return self.allowed[0]
        ok = token in self.allowed
        self.kept += ok
        self.refused += not ok
        return token if ok else None


def _masked_softmax(logits: torch.Tensor, allowed: list[int], temperature: float) -> torch.Tensor:
    masked = torch.full_like(logits, float("-inf"))
    masked[..., allowed] = logits[..., allowed]
    return (masked / temperature).softmax(-1)


def test_verified_draws_follow_the_masked_distribution():
    """Rows that draw first and are masked only when refused: the draws must follow the masked
    softmax (rejection is exact), with both kept and refused draws exercised."""
    torch.manual_seed(7)
    vocab, n = 40, 20000
    logits = torch.randn(1, vocab) * 1.5
    allowed = sorted(random.Random(3).sample(range(vocab), 12))
    mask = SetMask(allowed)
    p = SamplingParams(temperature=0.8, logits_processors=[mask])
    ids = Sampler({EOS}, torch.Generator().manual_seed(2))(logits.expand(n, -1), make_batch([p] * n)).token_ids
    assert mask.kept > 1000 and mask.refused > 1000  # both paths ran
    expected = _masked_softmax(logits[0], allowed, 0.8).double()
    assert_draws_follow(ids, expected)


def test_verified_greedy_rows_take_the_masked_argmax_and_single_choices_their_token():
    torch.manual_seed(8)
    logits = torch.randn(6, 50)
    masks = [SetMask(list(range(0, 50, k))) for k in (1, 2, 3, 7)] + [SetMask([13]), SetMask([int(logits[5].argmin())])]
    params = [SamplingParams(temperature=0, logits_processors=[m]) for m in masks]
    ids = Sampler({EOS})(logits, make_batch(params)).token_ids
    expected = [int(_masked_softmax(logits[i], m.allowed, 1.0).argmax()) for i, m in enumerate(masks)]
    assert ids == expected and ids[4] == 13


def test_truncating_rows_mask_before_the_draw():
    """top_p is computed on the masked distribution, so such rows never take the draw-first path."""
    torch.manual_seed(9)
    vocab, n = 30, 20000
    logits = torch.randn(1, vocab) * 2
    allowed = list(range(0, vocab, 2))
    mask = SetMask(allowed)
    p = SamplingParams(temperature=0.9, top_p=0.7, logits_processors=[mask])
    ids = Sampler({EOS}, torch.Generator().manual_seed(4))(logits.expand(n, -1), make_batch([p] * n)).token_ids
    assert mask.kept == mask.refused == 0
    masked = torch.full_like(logits, float("-inf"))
    masked[0, allowed] = logits[0, allowed]
    expected = hf_probs(masked, p)[0].double()
    assert_draws_follow(ids, expected)


def test_seeded_draws_follow_processed_softmax_across_blocks():
    """Seeded rows (one generator each) on a vocabulary of several inverse-CDF blocks, with the
    mass spread over far-apart tokens."""
    vocab = 1000
    logits = torch.full((1, vocab), -4.0)
    heavy = [3, 255, 256, 511, 700, 999]
    logits[0, heavy] = torch.tensor([2.0, 1.0, 1.5, 0.5, 2.2, 1.2])
    p = SamplingParams(temperature=1.2)
    expected = hf_probs(logits, p)[0].double()
    n = 4000
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    ids = Sampler({EOS})(logits.expand(n, -1), make_batch([p] * n, generators=gens)).token_ids
    counts = Counter(ids)
    obs = torch.tensor([counts[t] for t in heavy] + [n - sum(counts[t] for t in heavy)], dtype=torch.float64)
    exp = torch.cat([expected[heavy], (1 - expected[heavy].sum()).reshape(1)]) * n
    chi2 = ((obs - exp) ** 2 / exp).sum().item()
    assert chi2 < chi2_critical(len(heavy), 1e-6)


def test_inverse_cdf_never_draws_zero_probability_tokens():
    probs = torch.zeros(3, 700)
    probs[0, 0] = 1.0
    probs[1, 699] = 1e-30
    probs[2, [256, 257]] = 0.5
    for u in (0.0, 0.5, 1 - 1e-16):
        ids = sample_from_probs(probs, torch.full((3,), u, dtype=torch.float64)).tolist()
        assert ids[0] == 0 and ids[1] == 699 and ids[2] in (256, 257)


def test_greedy_is_argmax_of_processed_logits_in_any_dtype():
    torch.manual_seed(6)
    logits = torch.randn(4, 100).bfloat16()
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, repetition_penalty=5.0),
              SamplingParams(temperature=0, logit_bias={42: 100}), SamplingParams(temperature=0)]
    outputs = [[], [int(logits[1].float().argmax())], [], []]
    sampler = Sampler({EOS})
    ids = sampler(logits, make_batch(params, outputs=outputs)).token_ids
    processed = sampler.process_logits(logits, make_batch(params, outputs=outputs))
    assert ids == processed.argmax(-1).tolist()
    assert ids[2] == 42
    assert ids[1] != outputs[1][0]


def test_seeded_rows_same_alone_and_in_shuffled_batch():
    torch.manual_seed(7)
    vocab = 3000
    seeded = [SamplingParams(seed=s, **kw) for s, kw in enumerate([
        {}, {"top_p": 0.9}, {"top_k": 30, "temperature": 0.7}, {"min_p": 0.05},
        {"repetition_penalty": 1.3, "frequency_penalty": 0.4, "top_p": 0.8}, {"top_k": 2000, "top_p": 0.95}])]
    others = [SamplingParams(), SamplingParams(temperature=0), SamplingParams(top_p=0.5, top_k=10)]
    logits = {id(p): torch.randn(8, vocab) * 3 for p in seeded + others}  # 8 steps of logits per row
    outputs = {id(p): [11, 12] for p in seeded + others}

    def run(rows: list[SamplingParams], steps: int = 8) -> dict[int, list[int]]:
        gens = {id(p): torch.Generator().manual_seed(p.seed) if p.seed is not None else None for p in rows}
        sampler = Sampler({EOS}, torch.Generator().manual_seed(random.randrange(1 << 30)))
        tokens: dict[int, list[int]] = {id(p): [] for p in rows}
        for step in range(steps):
            batch = make_batch(rows, outputs=[outputs[id(p)] + tokens[id(p)] for p in rows],
                               generators=[gens[id(p)] for p in rows])
            ids = sampler(torch.stack([logits[id(p)][step] for p in rows]), batch).token_ids
            for p, t in zip(rows, ids, strict=True):
                tokens[id(p)].append(t)
        return tokens

    alone = {}
    for p in seeded:
        alone.update(run([p]))
    rng = random.Random(0)
    for _ in range(3):
        rows = seeded + others
        rng.shuffle(rows)
        together = run(rows)
        for p in seeded:
            assert together[id(p)] == alone[id(p)]
    assert len({tuple(v) for v in alone.values()}) > 1


def test_unseeded_rows_follow_the_sampler_generator():
    logits = torch.zeros(16, 1000)
    params = [SamplingParams()] * 16
    a = Sampler({EOS}, torch.Generator().manual_seed(3))(logits, make_batch(params)).token_ids
    b = Sampler({EOS}, torch.Generator().manual_seed(3))(logits, make_batch(params)).token_ids
    c = Sampler({EOS}, torch.Generator().manual_seed(4))(logits, make_batch(params)).token_ids
    assert a == b and a != c


# ---- min_tokens, logit_bias, logits processors ----

def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    logits = torch.zeros(4, 20)
    logits[:, EOS] = 10.0
    logits[:, 7] = 9.0
    logits[:, 5] = 8.0
    sampler = Sampler({EOS})
    params = [SamplingParams(temperature=0, min_tokens=3),
              SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[7]),
              SamplingParams(temperature=0, min_tokens=3, ignore_eos=True, stop_token_ids=[7]),
              SamplingParams(min_tokens=3, stop_token_ids=[7])]
    early = sampler(logits, make_batch(params, outputs=[[1]] * 4)).token_ids
    assert early[:3] == [7, 5, EOS]  # eos masked; stop ids masked too; ignore_eos leaves eos alone
    processed = sampler.process_logits(logits, make_batch(params, outputs=[[1]] * 4))
    assert processed[3, EOS] == -math.inf and processed[3, 7] == -math.inf
    late = sampler(logits[:3], make_batch(params[:3], outputs=[[1, 1, 1]] * 3)).token_ids
    assert late == [EOS, EOS, EOS]


def test_logit_bias_adds_to_the_logits():
    torch.manual_seed(8)
    logits = torch.randn(64, 2).t()  # not contiguous
    before = logits.clone()
    params = [SamplingParams(logit_bias={3: 5.0, 10: -100, 63: 0.5, 64: 9.0}), SamplingParams()]
    out = Sampler({EOS}).process_logits(logits, make_batch(params))
    ref = logits.clone()
    ref[0, 3] += 5.0
    ref[0, 10] -= 100
    ref[0, 63] += 0.5  # id 64 is outside the vocabulary: ignored
    assert torch.equal(out, ref)
    assert torch.equal(logits, before)  # the caller's tensor is untouched


def test_logits_processors_run_in_order_after_penalties():
    seen = []

    def allow_only(ids):
        def proc(output_ids, row):
            seen.append((list(output_ids), row.clone()))
            mask = torch.full_like(row, -math.inf)
            mask[ids] = 0
            return row + mask
        return proc

    logits = torch.zeros(2, 50)
    logits[:, 10] = 5.0
    params = [SamplingParams(logit_bias={11: 1.0}, logits_processors=[allow_only([11, 12, 13]), allow_only([12, 13])]),
              SamplingParams(temperature=0)]
    ids = Sampler({EOS})(logits, make_batch(params, outputs=[[4, 4], []])).token_ids
    assert ids[0] in (12, 13) and ids[1] == 10
    assert seen[0][0] == [4, 4] and seen[0][1][11] == 1.0  # saw the biased row
    assert seen[1][1][10] == -math.inf and seen[1][1][11] == 1.0  # the second saw the first's mask


# ---- logprobs ----

def test_logprobs_are_raw_log_softmax_with_ranks():
    torch.manual_seed(9)
    logits = torch.randn(4, 200) * 2
    params = [SamplingParams(logprobs=5, temperature=0.5, repetition_penalty=2.0),
              SamplingParams(),
              SamplingParams(logprobs=0, top_k=3),
              SamplingParams(logprobs=20, temperature=0, logit_bias={199: 100})]
    out = Sampler({EOS}, torch.Generator().manual_seed(0))(logits, make_batch(params, outputs=[[1, 2]] * 4))
    raw = torch.log_softmax(logits, -1)
    assert out.logprobs[1] is None
    for i in (0, 2, 3):
        row, tok = out.logprobs[i], out.token_ids[i]
        assert row.token_logprob == pytest.approx(raw[i, tok].item(), abs=1e-6)
        assert row.token_rank == int((raw[i] > raw[i, tok]).sum()) + 1
        ref_lp, ref_ids = raw[i].topk(params[i].logprobs)
        assert [t for t, _ in row.top] == ref_ids.tolist()
        assert [lp for _, lp in row.top] == pytest.approx(ref_lp.tolist(), abs=1e-6)
    assert out.token_ids[3] == 199 and out.logprobs[3].token_rank > 1  # raw, not the biased logits
    assert out.logprobs[2].top == []


def test_batch_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        Sampler({EOS})(torch.zeros(3, 10), make_batch([SamplingParams()] * 2))
