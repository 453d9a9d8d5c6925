"""The runner's side of ``{"method": "draft_model"}``: the draft model proposes, greedily, the
tokens the scheduler asked it for, before the target's forward pass of the same step.

The draft's KV cache mirrors the target's: tensors of its own (one pair per draft layer) indexed by
the target's block tables, so every block the scheduler allocates, frees, truncates, shares (prefix
hits, forks) or copies on write holds the draft's K/V of the same tokens as the target's. Each step
the draft first runs the step's known tokens of the scheduled requests (prefill chunks included),
then one decode pass per proposed token for the requests that speculate. A proposal's last token is
never run through the draft in its own step; when the target keeps it, the draft catches up on the
next step: the first pass of a decoding request starts one position early (rewriting that
position's K/V if the draft has it already).

A decoding request that proposes nothing this step is left out of the draft's passes: the draft
falls behind it (remembered as the first position it lacks) and catches up in the first pass of the
request's next proposing step, so a request the adaptive policy has switched off costs no draft
work. Prompts always run through the draft, so that prompt blocks shared through the prefix cache
hold the draft's K/V. Whatever the draft's cache holds, verification keeps the tokens exact: a
stale position (a request that left the step while behind, then came back) only lowers acceptance.

The proposal is the draft's argmax at each position (after the request's own logit processing:
logit_bias, min_tokens, penalties, as the target's greedy choice sees them), a point mass, so the target's verification
(``pagoda.spec.verification``) is the exact speculative-sampling rule for it at any temperature,
and a request's tokens are the same as without speculation whatever the draft proposes.
"""

from __future__ import annotations

from typing import Any

import torch

from pagoda.attention import quantized_kv
from pagoda.config import CacheConfig, ModelConfig
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.engine.step_inputs import flat_inputs
from pagoda.sample.sampler import Sampler, SamplingBatch


class DraftProposer:
    """Owns the draft model (a ``StepModel``) and its KV tensors; ``propose`` fills the
    ``spec_token_ids`` of every row of a step that asks for ``num_draft_tokens``."""

    def __init__(self, model: Any, draft_config: ModelConfig, cache_config: CacheConfig, sampler: Sampler,
                 device: torch.device) -> None:
        self.model = model
        self.sampler = sampler  # its logit processing only: the draft never samples
        self.block_size = cache_config.block_size
        self.device = device
        backend = model.attention_backend
        dtype, row = quantized_kv.cache_storage(cache_config.kv_cache_dtype, draft_config.dtype,
                                                draft_config.head_dim)
        shape = backend.kv_cache_shape(cache_config.num_blocks + 1, cache_config.block_size,
                                       draft_config.num_key_value_heads, row)
        self.attention = backend
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=device),
                           torch.zeros(shape, dtype=dtype, device=device))
                          for _ in range(draft_config.num_hidden_layers)]
        self._behind: dict[str, int] = {}  # request id -> the first position the draft has not run

    @torch.inference_mode()
    def propose(self, out: SchedulerOutput) -> None:
        if not out.scheduled:
            return
        self._copy_blocks(out.block_copies)
        # pass 1: the known tokens of every request that drafts or prefills, from where the draft is
        rows, scheduled, behind = [], [], {}
        for s in out.scheduled:
            row = _catch_up_row(s, self._behind.get(s.request.request_id))
            if s.num_draft_tokens == 0 and s.start >= s.request.num_prompt_tokens:
                behind[s.request.request_id] = row.start  # decodes without the draft: it falls behind
            else:
                rows.append(row)
                scheduled.append(s)
        self._behind = behind  # requests not in this step are forgotten (at worst a stale position)
        if not rows:
            return
        order = sorted(range(len(rows)), key=lambda i: rows[i].num_new_tokens != 1)  # decodes first
        rows = [rows[i] for i in order]
        scheduled = [scheduled[i] for i in order]
        hidden, starts = self._forward(rows)
        drafting = [(s, i) for i, s in enumerate(scheduled) if s.num_draft_tokens > 0]
        if not drafting:
            return
        tokens = self._argmax(hidden, [starts[i + 1] - 1 for _, i in drafting], [s for s, _ in drafting])
        for (s, _), token in zip(drafting, tokens, strict=True):
            s.spec_token_ids = [token]
        # passes 2..k: one decode row per request still drafting
        for j in range(1, max(s.num_draft_tokens for s, _ in drafting)):
            live = [s for s, _ in drafting if s.num_draft_tokens > j]
            last = [s.start + s.num_known_tokens - 1 for s in live]  # the last known token's position
            step = [ScheduledRequest(s.request, p + j, 1, s.block_table, [s.spec_token_ids[-1]])
                    for s, p in zip(live, last, strict=True)]
            hidden, _ = self._forward(step)
            for s, token in zip(live, self._argmax(hidden, list(range(len(live))), live), strict=True):
                s.spec_token_ids.append(token)

    def _forward(self, rows: list[ScheduledRequest]) -> tuple[torch.Tensor, list[int]]:
        input_ids, positions, metadata = flat_inputs(rows, self.block_size, self.device)
        return self.model(input_ids, positions, self.kv_caches, metadata), metadata.query_start_loc_list

    def _argmax(self, hidden: torch.Tensor, rows: list[int], scheduled: list[ScheduledRequest]) -> list[int]:
        """The next proposed token of each of ``scheduled``, from ``hidden``'s ``rows``."""
        logits = self.model.compute_logits(hidden[torch.tensor(rows, dtype=torch.int64, device=hidden.device)])
        requests = [s.request for s in scheduled]
        batch = SamplingBatch([r.params for r in requests], [r.prompt_token_ids for r in requests],
                              [r.output_token_ids + s.spec_token_ids for r, s in zip(requests, scheduled, strict=True)],
                              [None] * len(requests))
        logits = self.sampler.process_logits(logits, batch)
        return [int(t) for t in logits.argmax(dim=-1).tolist()]

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if copies:
            src = torch.tensor([s for s, _ in copies], device=self.device)
            dst = torch.tensor([d for _, d in copies], device=self.device)
            self.attention.copy_blocks(self.kv_caches, src, dst)

    def shutdown(self) -> None:
        self.kv_caches = []


def _catch_up_row(s: ScheduledRequest, behind: int | None) -> ScheduledRequest:
    """The step's known tokens of ``s``, from one position earlier when it decodes (the position
    of the last token of a proposal the target kept whole, which the draft has not run), or from
    ``behind`` (the first position the draft lacks) when that is earlier still."""
    first = s.start - 1 if s.start > 0 and s.start >= s.request.num_prompt_tokens else s.start
    if behind is not None and behind < first:
        first = behind
    return ScheduledRequest(s.request, first, s.start + s.num_known_tokens - first, s.block_table)
