"""The sampler: one token per row from a step's logits, in vLLM v1's order.

1. Raw logprobs (the model's log-softmax, before any processing) for rows that ask for them.
2. Logit processing in float32: logit_bias, min_tokens (eos and stop ids masked), repetition
   penalty (HF/CTRL, over prompt + output), frequency / presence penalties (OpenAI, over the
   output), then each row's logits processors (grammar masks plug in here).
3. Greedy rows take the argmax. The others: temperature, then min_p, top_k, top_p, then one draw.

CPU cost shapes the code. Every stage works on all rows at once and is skipped when no row asks
for it; penalties touch only the (row, token) pairs that occur; top-p finds its cut by a radix
select instead of sorting the vocabulary (a sort of 64 × 49152 takes >100 ms here); and a draw
uses one uniform per row (inverse CDF) because torch's CPU ``exponential_`` and ``multinomial``
cost ~20 ns per vocabulary entry (60 ms at 64 × 49152).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from pagoda.sample.sampling_batch import RowLogprobs, SamplerOutput, SamplingBatch
from pagoda.sampling_params import SamplingParams

__all__ = ["RowLogprobs", "Sampler", "SamplerOutput", "SamplingBatch"]

_DIGIT_BITS = 15  # top-p radix select: two passes of 15-bit digits cover a probability's 30 bits
_SORTED_TOP_P_MAX_K = 1024  # with top_k at most this, top-p reads the (sorted) top-k values


class Sampler:
    """Samples one token per row. ``generator`` drives unseeded rows (None: torch's default RNG);
    a row with its own generator draws from it alone, so a seeded request's tokens do not depend
    on which other rows share its batch or where it sits."""

    def __init__(self, eos_token_ids: Iterable[int], generator: torch.Generator | None = None) -> None:
        self.eos_token_ids = frozenset(eos_token_ids)
        self.generator = generator

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != len(batch):
            raise ValueError(f"logits {tuple(logits.shape)} do not match a batch of {len(batch)} rows")
        params, n = batch.params, len(batch)
        logprob_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        raw_logprobs = logits[logprob_rows].float().log_softmax(-1) if logprob_rows else None

        logits = self.process_logits(logits, batch)
        token_ids = torch.zeros(n, dtype=torch.long, device=logits.device)
        greedy = [i for i, p in enumerate(params) if p.greedy]
        if greedy:
            token_ids[greedy] = argmax(logits[_rows(greedy, n)])
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if sampled:
            probs = sampling_probs(logits[_rows(sampled, n)], [params[i] for i in sampled])
            u = self._uniforms([batch.generators[i] for i in sampled], logits.device)
            token_ids[sampled] = sample_from_probs(probs, u)

        ids = token_ids.tolist()
        logprobs: list[RowLogprobs | None] = [None] * n
        if raw_logprobs is not None:
            rows = _row_logprobs(raw_logprobs, [ids[i] for i in logprob_rows],
                                 [params[i].logprobs for i in logprob_rows])
            for i, row in zip(logprob_rows, rows, strict=True):
                logprobs[i] = row
        return SamplerOutput(token_ids=ids, logprobs=logprobs)

    def process_logits(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Step 2 in float32. Returns a new tensor when some row asks for processing, else
        ``logits.float()`` (which may be ``logits`` itself: callers must not modify it)."""
        params, outputs = batch.params, batch.output_token_ids
        bias = [i for i, p in enumerate(params) if p.logit_bias]
        min_tokens = [i for i, p in enumerate(params) if len(outputs[i]) < p.min_tokens]
        repetition = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
        freq_presence = [i for i, p in enumerate(params) if p.frequency_penalty or p.presence_penalty]
        processors = [i for i, p in enumerate(params) if p.logits_processors]
        if not (bias or min_tokens or repetition or freq_presence or processors):
            return logits.float()

        # our own contiguous copy: everything below is in place
        logits = logits.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        n, vocab = logits.shape
        flat, device = logits.view(-1), logits.device
        if bias:
            pairs = [(i * vocab + t, b) for i in bias for t, b in params[i].logit_bias.items() if 0 <= t < vocab]
            if pairs:
                keys, values = zip(*pairs, strict=True)
                flat.index_add_(0, torch.tensor(keys, device=device), torch.tensor(values, device=device))
        if min_tokens:
            # until min_tokens are out, nothing may end the sequence
            keys = [i * vocab + t for i in min_tokens for t in self._stop_ids(params[i]) if 0 <= t < vocab]
            flat[torch.tensor(keys, dtype=torch.long, device=device)] = float("-inf")
        if repetition:
            rows, tokens = _token_pairs([i for i in repetition for _ in (0, 1)],
                                        [s for i in repetition for s in (batch.prompt_token_ids[i], outputs[i])],
                                        device)
            penalty = _per_row([p.repetition_penalty for p in params], device)
            apply_repetition_penalty(logits, rows, tokens, penalty)
        if freq_presence:
            rows, tokens = _token_pairs(freq_presence, [outputs[i] for i in freq_presence], device)
            apply_frequency_presence_penalties(logits, rows, tokens,
                                               _per_row([p.frequency_penalty for p in params], device),
                                               _per_row([p.presence_penalty for p in params], device))
        for i in processors:
            row = logits[i]
            for processor in params[i].logits_processors:
                row = processor(outputs[i], row)
            logits[i] = row
        return logits

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids or ())
        return ids if params.ignore_eos else ids | self.eos_token_ids

    def _uniforms(self, generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
        """One U[0, 1) float64 per row: seeded rows from their own generator, the rest from ours."""
        u = torch.empty(len(generators), dtype=torch.float64, device=device)
        shared = [j for j, g in enumerate(generators) if g is None]
        if shared:
            u[shared] = torch.rand(len(shared), generator=self.generator, dtype=torch.float64, device=device)
        for j, g in enumerate(generators):
            if g is not None:
                u[j] = torch.rand((), generator=g, dtype=torch.float64, device=g.device)
        return u


# ---- logit processing (in place on float32 [rows, vocab]) ----

def apply_repetition_penalty(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                             penalty: torch.Tensor) -> None:
    """HF/CTRL: for every (row, token) pair seen (duplicates are fine), a positive logit is divided
    by the row's penalty and a negative one multiplied by it. ``penalty`` is per row."""
    vocab = logits.shape[1]
    keys = torch.unique(rows * vocab + tokens)
    flat = logits.view(-1)
    scores, p = flat[keys], penalty[keys // vocab]
    flat[keys] = torch.where(scores < 0, scores * p, scores / p)


def apply_frequency_presence_penalties(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                                       frequency: torch.Tensor, presence: torch.Tensor) -> None:
    """OpenAI: logit -= count * frequency + (count > 0) * presence, counting the (row, token) pairs."""
    vocab = logits.shape[1]
    keys, counts = torch.unique(rows * vocab + tokens, return_counts=True)
    row = keys // vocab
    logits.view(-1).index_add_(0, keys, -(counts * frequency[row] + presence[row]))


# ---- truncation and the draw (on probabilities) ----

def sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then min_p, top_k, top_p (vLLM's order): the unnormalised distribution each row
    draws from, zero outside what is kept. ``logits`` is not modified."""
    device = logits.device
    if any(p.temperature != 1.0 for p in params):
        logits = logits / _per_row([p.temperature for p in params], device)[:, None]
    probs = logits.softmax(-1)
    n, vocab = probs.shape

    # min_p and top_k are cuts on the same ordering, so they apply together as one threshold
    cut = torch.zeros(n, device=device)
    if any(p.min_p > 0 for p in params):
        cut = _per_row([p.min_p for p in params], device) * probs.amax(-1)
    top_k = [i for i, p in enumerate(params) if 0 < p.top_k < vocab]
    sorted_top = None
    if top_k:
        k = torch.tensor([params[i].top_k for i in top_k], device=device)
        sorted_top = probs[top_k].topk(int(k.max())).values
        kth = sorted_top.gather(1, (k - 1)[:, None]).squeeze(1)
        cut[top_k] = torch.maximum(cut[top_k], kth)
        sorted_top[torch.arange(sorted_top.shape[1], device=device) >= k[:, None]] = 0
    if top_k or any(p.min_p > 0 for p in params):
        probs.masked_fill_(probs < cut[:, None], 0)

    top_p = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if top_p:
        k_of = {i: j for j, i in enumerate(top_k)}
        if all(i in k_of and params[i].top_k <= _SORTED_TOP_P_MAX_K for i in top_p):
            # the nucleus lies inside the top-k values we already hold, sorted
            top = sorted_top[[k_of[i] for i in top_p]]
            top.masked_fill_(top < cut[top_p][:, None], 0)
            cut[top_p] = top_p_cut_sorted(top, _per_row([params[i].top_p for i in top_p], device))
        else:
            cut[top_p] = top_p_cut(probs[_rows(top_p, n)], _per_row([params[i].top_p for i in top_p], device))
        probs.masked_fill_(probs < cut[:, None], 0)
    return probs


def top_p_cut_sorted(sorted_probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The smallest probability top-p keeps, from each row's probabilities sorted descending (all of
    the row's mass). A token is kept while the mass strictly before it is below top_p of the total,
    as in HF's TopPLogitsWarper; the top token is always kept."""
    cum = sorted_probs.double().cumsum(-1)
    need = top_p.double() * cum[:, -1]
    kept = ((cum - sorted_probs) < need[:, None]).sum(-1).clamp_min(1)
    return sorted_probs.gather(1, (kept - 1)[:, None]).squeeze(1)


def top_p_cut(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``top_p_cut_sorted`` without sorting: a radix select on the float bits. Non-negative float32s
    order like their int32 bit patterns, and probabilities (<= 1.0 = 0x3F800000) use 30 bits. One
    pass histograms the probability mass by the high 15 bits and finds the bin holding the cut; a
    second histograms that bin's tokens by the low 15 bits. As in HF, a token is dropped when the
    mass at or below it in ascending order is at most (1 - top_p) of the total: summing from the
    small end keeps the tail exact in float32. Tokens tied with the cut are all kept."""
    n = probs.shape[0]
    keys = probs.view(torch.int32)
    bins = 1 << _DIGIT_BITS
    high = torch.zeros(n, bins, device=probs.device).scatter_add_(1, (keys >> _DIGIT_BITS).long(), probs)
    drop = (1 - top_p) * high.sum(-1)
    d_high = _first_bin_over(high, drop)
    # the cut bin's tokens by their low bits; lighter tokens land in bin 0, heavier in the last
    offset = (keys - (d_high << _DIGIT_BITS).int()[:, None]).clamp_(-1, bins) + 1
    low = torch.zeros(n, bins + 2, device=probs.device).scatter_add_(1, offset.long(), probs)
    d_low = _first_bin_over(low[:, 1:-1], drop - low[:, 0])
    return ((d_high << _DIGIT_BITS) | d_low).int().view(torch.float32)


def _first_bin_over(hist: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Per row, the first bin where the running sum of ``hist`` exceeds ``drop`` (block sums first,
    then inside one block, so no cumsum runs over all bins). Where rounding leaves no bin over
    (top_p so small that 1 - top_p rounds to 1) it is the last non-empty bin: the top token."""
    n = hist.shape[0]
    blocks = _blocks(hist, 0.0)
    block_cum = blocks.sum(-1).cumsum(-1)
    b = _first_over(block_cum, drop, blocks.amax(-1) > 0)
    start = torch.where(b > 0, block_cum.gather(1, (b - 1).clamp_min(0)[:, None]).squeeze(1), 0.0)
    block = blocks[torch.arange(n, device=hist.device), b]
    return b * blocks.shape[2] + _first_over(start[:, None] + block.cumsum(-1), drop, block > 0)


def _first_over(cum: torch.Tensor, drop: torch.Tensor, nonempty: torch.Tensor) -> torch.Tensor:
    first = torch.searchsorted(cum, drop[:, None], right=True).squeeze(1)
    last = (nonempty.int() * torch.arange(cum.shape[1], device=cum.device)).argmax(-1)
    return torch.where(first < cum.shape[1], first, last)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One inverse-CDF draw per row from unnormalised ``probs`` [rows, vocab] with ``u`` ~ U[0, 1)
    (float64, one per row). Two levels, a block of tokens then a token inside it, keep each running
    sum short, so rounding cannot swallow small probabilities as one float32 cumsum over the
    vocabulary would; a token of probability zero is never drawn."""
    n, vocab = probs.shape
    blocks = _blocks(probs, 0.0)
    block_cum = blocks.sum(-1).double().cumsum(-1)
    target = u.clamp(max=1 - 1e-12)[:, None] * block_cum[:, -1:]  # < total, even after rounding
    b = torch.searchsorted(block_cum, target, right=True).clamp_max(block_cum.shape[1] - 1)
    start = torch.where(b > 0, block_cum.gather(1, (b - 1).clamp_min(0)), 0.0)
    frac = ((target - start) / (block_cum.gather(1, b) - start)).clamp(0, 1 - 1e-12)
    inner = blocks[torch.arange(n, device=probs.device), b.squeeze(1)].double().cumsum(-1)
    j = torch.searchsorted(inner, frac * inner[:, -1:], right=True).clamp_max(blocks.shape[2] - 1)
    return (b * blocks.shape[2] + j).squeeze(1).clamp_max(vocab - 1)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Row argmax (the first index of the maximum), as ``logits.argmax(-1)``. torch's CPU argmax is
    a scalar loop, ten times slower than the vectorised max of each block; so find the block
    holding the maximum, then the index inside it."""
    blocks = _blocks(logits, float("-inf"))
    b = blocks.amax(-1).argmax(-1)
    return b * blocks.shape[2] + blocks[torch.arange(logits.shape[0], device=logits.device), b].argmax(-1)


# ---- helpers ----

def _row_logprobs(raw: torch.Tensor, tokens: list[int], counts: list[int]) -> list[RowLogprobs]:
    token = torch.tensor(tokens, device=raw.device)
    token_lp = raw.gather(1, token[:, None]).squeeze(1)
    ranks = ((raw > token_lp[:, None]).sum(-1) + 1).tolist()
    k = max(counts)
    top_lp, top_ids = raw.topk(k, dim=-1) if k else (raw[:, :0], raw[:, :0].long())
    top_lp, top_ids, token_lp = top_lp.tolist(), top_ids.tolist(), token_lp.tolist()
    return [RowLogprobs(token_lp[j], ranks[j], list(zip(top_ids[j][:c], top_lp[j][:c], strict=True)))
            for j, c in enumerate(counts)]


def _token_pairs(rows: list[int], seqs: list[Sequence[int]], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel (row, token) tensors from per-row token sequences, with no Python loop over tokens."""
    tensors = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
    # (torch.repeat_interleave would do, but its CPU kernel takes ~20 ms even on a few tokens)
    row_ids = torch.cat([torch.full((len(t),), r, dtype=torch.long) for r, t in zip(rows, tensors, strict=True)])
    return row_ids.to(device), torch.cat(tensors).to(device)


def _blocks(x: torch.Tensor, pad_value: float) -> torch.Tensor:
    """``x`` [rows, n] as [rows, n / size, size]: a view when a power of two from 256 down to 32
    divides n, else padded with ``pad_value`` to a multiple of 256."""
    rows, n = x.shape
    for size in (256, 128, 64, 32):
        if n % size == 0:
            return x.reshape(rows, -1, size)
    return F.pad(x, (0, -n % 256), value=pad_value).view(rows, -1, 256)


def _per_row(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _rows(rows: list[int], n: int) -> slice | list[int]:
    """An index for ``rows``: a plain slice (a view, no copy) when it is every row."""
    return slice(None) if len(rows) == n else rows
