"""Taking back the last tokens of a request that a stop string ended part-way through a
speculated step's tokens."""

from __future__ import annotations

from pagoda.engine.request import Request


def drop_last_tokens(request: Request, n: int) -> None:
    """Removes the last ``n`` output tokens and their logprobs. Only for a request that is
    finishing: its K/V (which holds those tokens) is freed with it."""
    if n <= 0:
        return
    del request.output_token_ids[-n:]
    del request.all_token_ids[-n:]
    if len(request.logprobs) > request.num_output_tokens:
        del request.logprobs[request.num_output_tokens:]
        total = 0.0  # summed in the same order as when recorded: the same float as plain decoding's
        for token, entry in zip(request.output_token_ids, request.logprobs, strict=True):
            total += entry[token].logprob
        request.cumulative_logprob = total
