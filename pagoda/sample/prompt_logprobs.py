"""Log-probabilities of given target tokens (prompt logprobs), with top-k alternatives."""

from __future__ import annotations

import torch

from pagoda.outputs import Logprob, PositionLogprobs


def position_logprobs(logits: torch.Tensor, targets: list[int], top_k: int) -> list[PositionLogprobs]:
    """For each row of ``logits`` the raw log-softmax entry of ``targets[row]`` and of the ``top_k``
    most likely tokens, with ranks (1 = most likely)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(targets, device=logits.device)
    target_lp = logprobs.gather(1, target[:, None]).squeeze(1)
    ranks = (logprobs > target_lp[:, None]).sum(dim=1) + 1
    result: list[PositionLogprobs] = []
    top_vals, top_ids = logprobs.topk(top_k, dim=-1) if top_k > 0 else (None, None)
    for row, tok in enumerate(targets):
        entry: PositionLogprobs = {tok: Logprob(float(target_lp[row]), int(ranks[row]))}
        if top_ids is not None and top_vals is not None:
            for rank, (t, v) in enumerate(zip(top_ids[row].tolist(), top_vals[row].tolist(), strict=True), 1):
                entry.setdefault(t, Logprob(v, rank))
        result.append(entry)
    return result
