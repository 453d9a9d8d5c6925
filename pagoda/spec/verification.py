"""Verifying a proposal against the target model: which proposed tokens plain decoding would
have produced.

The target model scores the last known token and the k proposed ones in one pass: row j holds the
distribution of output position n + j given the proposals before it. The sampler draws one token
from every row, each exactly as plain decoding would draw at that position (same processing:
penalties, logit_bias, min_tokens, temperature, top-k/top-p/min-p; a seeded request's draw for
position n + j uses the generator seeded by (seed, n + j)). The proposals are kept while each equals
the draw of its row; the first row whose draw differs contributes that draw and ends the step
(all k kept: row k's draw is a bonus token).

This is speculative sampling (Leviathan et al. 2023; Chen et al. 2023) for a proposal that is a
point mass q = 1[d]: accepting with probability min(1, p(d)/q(d)) = p(d) and otherwise drawing from
the residual (p - q)+ normalised = p with d removed, renormalised, is the same law as drawing x ~ p
and keeping d when x == d, else emitting x. So each emitted token has exactly the target
distribution, and greedy rows emit exactly their argmax sequence.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def num_accepted(proposed: Sequence[int], drawn: Sequence[int], stop_token_ids: Collection[int]) -> int:
    """How many leading proposals the target kept: ``drawn[j]`` is row j's draw (``len(proposed) + 1``
    rows). A kept stop token ends the step there: it is emitted as the step's last token (the row's
    own draw), so the scheduler's stop check sees it last, as in plain decoding."""
    if len(drawn) != len(proposed) + 1:
        raise ValueError(f"{len(proposed)} proposed tokens need {len(proposed) + 1} draws, got {len(drawn)}")
    m = 0
    while m < len(proposed) and drawn[m] == proposed[m] and proposed[m] not in stop_token_ids:
        m += 1
    return m
