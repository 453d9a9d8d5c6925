"""The sampler: one token per row from a step's logits, in vLLM v1's order.

1. Raw logprobs (the model's log-softmax, before any processing) for rows that ask for them.
2. Logit processing in float32: logit_bias, min_tokens (eos and stop ids masked), repetition
   penalty (HF/CTRL, over prompt + output), frequency / presence penalties (OpenAI, over the
   output), then each row's logits processors (grammar masks plug in here). A row whose processor
   is a mask that can verify a drawn token (``verify_draw``) draws first and is masked only when
   its draw is refused: an exact shortcut that skips the mask for most constrained tokens.
3. Greedy rows take the argmax. The others: temperature, then min_p, top_k, top_p, then one draw.

CPU cost shapes the code. Every stage works on all rows at once and is skipped when no row asks
for it; penalties touch only the (row, token) pairs that occur; truncation is a test put to the
drawn token (rejection) rather than a sorted or masked vocabulary (a sort of 64 × 49152 takes
over 100 ms here); and a draw uses one uniform per row (inverse CDF), because torch's CPU
``exponential_`` and ``multinomial`` cost ~20 ns per vocabulary entry (60 ms at 64 × 49152)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch

from pagoda.logits_processor import DrawVerifier
from pagoda.sample.penalties import apply_frequency_presence_penalties, apply_repetition_penalty, token_pairs
from pagoda.sample.row_ops import argmax, count_above, per_row, row_index, sample_from_probs, topk
from pagoda.sample.sampling_batch import RowLogprobs, SamplerOutput, SamplingBatch
from pagoda.sample.truncation import Truncation
from pagoda.sampling_params import SamplingParams

__all__ = ["RowLogprobs", "Sampler", "SamplerOutput", "SamplingBatch"]

_MAX_DRAWS = 32  # a row still rejecting after this many draws (only NaN rows, in practice) takes its top token


class Sampler:
    """Samples one token per row. ``generator`` drives unseeded rows (None: torch's default RNG);
    a row with its own generator draws from it alone, so a seeded request's tokens do not depend
    on which other rows share its batch or where it sits."""

    def __init__(self, eos_token_ids: Iterable[int], generator: torch.Generator | None = None) -> None:
        self.eos_token_ids = frozenset(eos_token_ids)
        self.generator = generator

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """One token per row of ``logits`` [rows, vocab] (any float dtype; computed in float32)."""
        if logits.dim() != 2 or logits.shape[0] != len(batch):
            raise ValueError(f"logits {tuple(logits.shape)} do not match a batch of {len(batch)} rows")
        params, n = batch.params, len(batch)
        logprob_counts = {i: p.logprobs for i, p in enumerate(params) if p.logprobs is not None}
        logprob_rows = list(logprob_counts)
        raw_logprobs = logits[row_index(logprob_rows, n)].float().log_softmax(-1) if logprob_rows else None

        checked = [i for i, p in enumerate(params) if checks_after_draw(p)]
        logits = self.process_logits(logits, batch, skip_processors=checked)
        token_ids = self._select(logits, params, batch.generators)
        if checked:
            self._redraw_refused(logits, batch, checked, token_ids)

        ids = token_ids.tolist()
        logprobs: list[RowLogprobs | None] = [None] * n
        if raw_logprobs is not None:
            rows = _row_logprobs(raw_logprobs, [ids[i] for i in logprob_rows],
                                 [logprob_counts[i] for i in logprob_rows])
            for i, row in zip(logprob_rows, rows, strict=True):
                logprobs[i] = row
        return SamplerOutput(token_ids=ids, logprobs=logprobs)

    def _select(self, logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
        """Step 3: one token id per row of processed ``logits``."""
        n = len(params)
        token_ids = torch.zeros(n, dtype=torch.long, device=logits.device)
        greedy = [i for i, p in enumerate(params) if p.greedy]
        if greedy:
            token_ids[greedy] = argmax(logits[row_index(greedy, n)])
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if sampled:
            rows = logits[row_index(sampled, n)].float()
            if any(params[i].temperature != 1.0 for i in sampled):
                rows = rows / per_row([params[i].temperature for i in sampled], rows.device)[:, None]
            probs = rows.softmax(-1)
            truncation = Truncation.of(probs, [params[i] for i in sampled])
            token_ids[sampled] = self.draw(probs, truncation, [generators[i] for i in sampled])
        return token_ids

    def _redraw_refused(self, logits: torch.Tensor, batch: SamplingBatch, checked: list[int],
                        token_ids: torch.Tensor) -> None:
        """Rows in ``checked`` drew without their mask, which now verifies the draw; a row whose
        draw it refuses is masked and drawn again. Exact: a draw from p kept when allowed, else a
        draw from p restricted to the allowed set, is a draw from that restriction (a greedy row's
        allowed argmax is its masked argmax, and a mask allowing one token leaves no choice).
        Truncating rows are never checked, since their kept set depends on the mask."""
        params, outputs = batch.params, batch.output_token_ids
        drawn = token_ids.tolist()
        refused = []
        for i in checked:
            verifier = cast(DrawVerifier, params[i].logits_processors[0])  # checks_after_draw chose the row
            token = verifier.verify_draw(outputs[i], drawn[i])
            if token is None:
                refused.append(i)
            elif token != drawn[i]:
                token_ids[i] = token
        if not refused:
            return
        rows = logits[refused].float()  # indexing copies
        for j, i in enumerate(refused):
            rows[j] = params[i].logits_processors[0](outputs[i], rows[j])
        token_ids[refused] = self._select(rows, [params[i] for i in refused],
                                          [batch.generators[i] for i in refused])

    def process_logits(self, logits: torch.Tensor, batch: SamplingBatch,
                       skip_processors: Sequence[int] = ()) -> torch.Tensor:
        """Step 2 in float32, leaving out the logits processors of rows in ``skip_processors``.
        Returns a new tensor when some row asks for processing, else ``logits`` itself in its own
        dtype (callers must not modify it; an argmax needs no float32 copy of 64 x 49152 logits)."""
        params, outputs = batch.params, batch.output_token_ids
        bias = [i for i, p in enumerate(params) if p.logit_bias]
        min_tokens = [i for i, p in enumerate(params) if len(outputs[i]) < p.min_tokens]
        repetition = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
        freq_presence = [i for i, p in enumerate(params) if p.frequency_penalty or p.presence_penalty]
        skip = set(skip_processors)
        processors = [i for i, p in enumerate(params) if p.logits_processors and i not in skip]
        if not (bias or min_tokens or repetition or freq_presence or processors):
            return logits

        # our own contiguous copy: everything below is in place
        logits = logits.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        n, vocab = logits.shape
        flat, device = logits.view(-1), logits.device
        if bias:
            pairs = [(i * vocab + t, b) for i in bias for t, b in (params[i].logit_bias or {}).items()
                     if 0 <= t < vocab]
            if pairs:
                keys, values = zip(*pairs, strict=True)
                flat.index_add_(0, torch.tensor(keys, device=device), torch.tensor(values, device=device))
        if min_tokens:
            # until min_tokens are out, nothing may end the sequence
            stops = [i * vocab + t for i in min_tokens for t in self._stop_ids(params[i]) if 0 <= t < vocab]
            flat[torch.tensor(stops, dtype=torch.long, device=device)] = float("-inf")
        if repetition:
            rows, tokens = token_pairs([i for i in repetition for _ in (0, 1)],
                                        [s for i in repetition for s in (batch.prompt_token_ids[i], outputs[i])],
                                        device)
            penalty = per_row([p.repetition_penalty for p in params], device)
            apply_repetition_penalty(logits, rows, tokens, penalty)
        if freq_presence:
            rows, tokens = token_pairs(freq_presence, [outputs[i] for i in freq_presence], device)
            apply_frequency_presence_penalties(logits, rows, tokens,
                                               per_row([p.frequency_penalty for p in params], device),
                                               per_row([p.presence_penalty for p in params], device))
        for i in processors:
            row = logits[i]
            for processor in params[i].logits_processors:
                row = processor(outputs[i], row)
            logits[i] = row
        return logits

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids or ())
        return ids if params.ignore_eos else ids | self.eos_token_ids

    def draw(self, probs: torch.Tensor, truncation: Truncation | None,
             generators: list[torch.Generator | None]) -> torch.Tensor:
        """One token per row from ``probs`` restricted to what ``truncation`` keeps, by rejection
        (as FlashInfer samples top-p without sorting): draw from the tokens above a floor; a draw the
        truncation keeps is a draw from the kept set; otherwise no token as likely as it or less is
        kept either, so the floor rises to it and the row draws again. The first draw ignores the
        floor (min_p and top_k usually keep most of the mass), so a row that keeps its first draw
        costs one pass over the vocabulary, plus top-p's test on the few blocks above the token."""
        tokens = sample_from_probs(probs, self._uniforms(generators, probs.device))
        if truncation is None:
            return tokens
        pending = torch.arange(probs.shape[0], device=probs.device)
        candidates, drawn = probs, tokens
        for _ in range(_MAX_DRAWS):
            token_probs = candidates.gather(1, drawn[:, None]).squeeze(1)
            rejected = ~truncation.keeps(candidates, token_probs, pending)
            if not rejected.any():
                return tokens
            pending = pending[rejected]
            floor = torch.maximum(token_probs[rejected], truncation.floor[pending])
            candidates = probs[pending]
            candidates = torch.where(candidates > floor[:, None], candidates, 0.0)
            drawn = sample_from_probs(candidates, self._uniforms([generators[i] for i in pending.tolist()],
                                                                 probs.device))
            tokens[pending] = drawn
        tokens[pending] = argmax(candidates)
        return tokens

    def _uniforms(self, generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
        """One U[0, 1) float64 per row: seeded rows from their own generator, the rest from ours."""
        # drawn on the generators' device (the host) and copied once: the same draws on every device
        u = torch.empty(len(generators), dtype=torch.float64)
        shared = [j for j, g in enumerate(generators) if g is None]
        if shared:
            u[shared] = torch.rand(len(shared), generator=self.generator, dtype=torch.float64)
        for j, g in enumerate(generators):
            if g is not None:
                u[j] = torch.rand((), generator=g, dtype=torch.float64, device=g.device)
        return u.to(device)


def checks_after_draw(params: SamplingParams) -> bool:
    """Whether a row's logits processor can run after its draw, as a check: it is a single mask
    that can verify one drawn token (``verify_draw(output_token_ids, token_id) -> token | None``),
    and the row does not truncate (top_p, top_k and min_p are computed on the masked distribution)."""
    processors = params.logits_processors
    return len(processors) == 1 and isinstance(processors[0], DrawVerifier) and (
        params.greedy or (params.top_p >= 1.0 and not 0 < params.top_k and params.min_p <= 0.0))


# ---- helpers ----

def _row_logprobs(raw: torch.Tensor, tokens: list[int], counts: list[int]) -> list[RowLogprobs]:
    token = torch.tensor(tokens, device=raw.device)
    token_lp = raw.gather(1, token[:, None]).squeeze(1)
    ranks = (count_above(raw, token_lp) + 1).tolist()
    k = max(counts)
    top_lp, top_ids = topk(raw, k) if k else (raw[:, :0], raw[:, :0].long())
    lps, top_lps, top_tokens = token_lp.tolist(), top_lp.tolist(), top_ids.tolist()
    return [RowLogprobs(lps[j], ranks[j], list(zip(top_tokens[j][:c], top_lps[j][:c], strict=True)))
            for j, c in enumerate(counts)]


