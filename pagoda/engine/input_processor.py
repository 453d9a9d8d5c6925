"""Input processing: a request as the user gives it -> a validated, tokenized ``RequestGroup``."""

from __future__ import annotations

import time

from pagoda.config import ModelConfig
from pagoda.engine.request_group import RequestGroup
from pagoda.errors import InvalidRequestError
from pagoda.outputs import RequestMetrics
from pagoda.sampling_params import SamplingParams
from pagoda.tokenizer import Tokenizer


class InputProcessor:
    """Validates the prompt (text or token ids) and params, tokenizes, resolves ``max_tokens`` to the
    room left in the context, and builds the n samples (the first computes the prompt; the others
    fork from it once it is computed, sharing its KV blocks). Raises ``InvalidRequestError``."""

    def __init__(self, tokenizer: Tokenizer, model_config: ModelConfig, *, max_kv_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = model_config.max_model_len
        # the whole KV pool: a sequence longer than this could never be scheduled (it would wait forever)
        self.max_kv_tokens = max_kv_tokens
        self.vocab_size = model_config.vocab_size

    def process(self, request_id: str, prompt: str | list[int], params: SamplingParams, *, priority: int = 0,
                arrival_time: float | None = None, cache_salt: str | None = None) -> RequestGroup:
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams", "sampling_params")
        prompt_text, prompt_ids = self.tokenize(prompt)
        if params.pooling == "mean":  # every prompt row is needed: no prefix-cache hit may skip one
            cache_salt = f"{cache_salt or ''}\x00pooling:{request_id}"
        max_len = self.max_model_len
        if len(prompt_ids) >= max_len:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_ids)} tokens, but the model's context is {max_len} tokens "
                f"(leaving no room to generate)", "prompt")
        room = max_len - len(prompt_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        if self.max_kv_tokens is not None:
            max_tokens = self._fit_kv_pool(len(prompt_ids), max_tokens, params.max_tokens is not None)
        metrics = RequestMetrics(arrival_time=arrival_time or time.monotonic())
        group = RequestGroup.create(request_id, prompt_text, prompt_ids, params, self.tokenizer, metrics,
                                    max_tokens=max_tokens, priority=priority, cache_salt=cache_salt)
        first, *others = (s.request for s in group.samples)
        first.pending_forks = others
        return group

    def _fit_kv_pool(self, num_prompt: int, max_tokens: int, explicit: bool) -> int:
        """``max_tokens`` for a sequence that fits the KV pool alone: a 400 when the prompt (or the prompt
        plus an explicit max_tokens) cannot; an unspecified max_tokens ends where the pool does."""
        assert self.max_kv_tokens is not None
        pool_room = self.max_kv_tokens - num_prompt
        if pool_room < 1:
            raise InvalidRequestError(f"the prompt has {num_prompt} tokens, but the KV cache holds "
                                      f"{self.max_kv_tokens} tokens in all; it can never be scheduled", "prompt")
        if explicit and max_tokens > pool_room:
            raise InvalidRequestError(f"the prompt ({num_prompt} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                      f"KV cache ({self.max_kv_tokens} tokens in all); it could never finish",
                                      "max_tokens")
        return min(max_tokens, pool_room)

    def tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt must not be empty", "prompt")
            return prompt, self.tokenizer.encode(prompt)
        if not isinstance(prompt, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise InvalidRequestError("the prompt must be a string or a list of token ids", "prompt")
        if not prompt:
            raise InvalidRequestError("the prompt must not be empty", "prompt")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}", "prompt")
        return None, list(prompt)
