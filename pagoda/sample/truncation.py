"""min_p, top_k and top_p as a test a drawn token is put to, so the kept set is never built."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagoda.sample.row_ops import mass_above, per_row, row_index, topk
from pagoda.sampling_params import SamplingParams


@dataclass
class Truncation:
    """What min_p, top_k and top_p keep, as a test a drawn token can be put to, so the kept set is
    never built (that would take a sort or a mask over the vocabulary). A token is kept when its
    probability is above ``floor`` (min_p and top_k: every token at least as likely as the k-th and
    at least min_p times the top one) and the mass strictly above it is below ``need`` (top_p of the
    mass that min_p and top_k keep; HF's TopPLogitsWarper rule). The kept set is therefore always the
    most likely tokens, and the top token is always in it. Tokens tied at a cut are all kept."""

    floor: torch.Tensor  # [rows]
    need: torch.Tensor | None  # [rows]; None when no row uses top_p

    @classmethod
    def of(cls, probs: torch.Tensor, params: list[SamplingParams]) -> Truncation | None:
        """The truncation of each row of ``probs`` (after temperature), or None if no row truncates."""
        n, vocab = probs.shape
        device = probs.device
        top_k = [i for i, p in enumerate(params) if 0 < p.top_k < vocab]
        use_min_p = any(p.min_p > 0 for p in params)
        use_top_p = any(p.top_p < 1.0 for p in params)
        if not (top_k or use_min_p or use_top_p):
            return None
        cut = torch.zeros(n, device=device)
        if use_min_p:
            cut = per_row([p.min_p for p in params], device) * probs.amax(-1)
        if top_k:
            k = torch.tensor([params[i].top_k for i in top_k], device=device)
            kth = topk(probs[row_index(top_k, n)], int(k.max()))[0].gather(1, (k - 1)[:, None]).squeeze(1)
            cut[top_k] = torch.maximum(cut[top_k], kth)
        floor = torch.nextafter(cut, torch.zeros_like(cut))  # p > floor  <=>  p >= cut
        need = None
        if use_top_p:
            kept_mass = mass_above(probs, floor) if top_k or use_min_p else probs.sum(-1)
            need = per_row([p.top_p for p in params], device) * kept_mass
            need[[i for i, p in enumerate(params) if p.top_p >= 1.0]] = float("inf")
        return cls(floor, need)

    def keeps(self, probs: torch.Tensor, token_probs: torch.Tensor, rows: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Whether each row keeps the token whose probability is ``token_probs``; ``rows`` selects
        this truncation's rows that ``probs`` holds (all of them when None)."""
        floor, need = (self.floor, self.need) if rows is None else (
            self.floor[rows], None if self.need is None else self.need[rows])
        kept = token_probs > floor
        if need is not None:
            kept &= mass_above(probs, token_probs) < need
        return kept
