"""The records that cross the sampler boundary: what the model runner hands in, what comes back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagoda.sampling_params import SamplingParams


@dataclass
class SamplingBatch:
    """One row per sequence sampled this step, in the row order of the logits.

    Built by the model runner each step. Token sequences may be lists or 1-D integer tensors;
    ``output_token_ids`` holds the tokens generated so far, before this step's token.
    ``generators[i]`` is the request's own generator when it has a seed, else None (the
    sampler's shared generator is used).
    """

    params: list[SamplingParams]
    prompt_token_ids: list[Sequence[int]]
    output_token_ids: list[Sequence[int]]
    generators: list[torch.Generator | None]

    def __post_init__(self) -> None:
        n = len(self.params)
        if not len(self.prompt_token_ids) == len(self.output_token_ids) == len(self.generators) == n:
            raise ValueError("SamplingBatch fields must all have one entry per row")

    def __len__(self) -> int:
        return len(self.params)


@dataclass
class RowLogprobs:
    """Raw (unprocessed) log-probabilities for one row that asked for ``logprobs``."""

    token_logprob: float  # of the sampled token
    token_rank: int  # of the sampled token; 1 = most likely
    top: list[tuple[int, float]]  # the params.logprobs most likely (id, logprob), best first


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one sampled id per row
    logprobs: list[RowLogprobs | None]  # None for rows whose params.logprobs is None
