"""Input processing: a request as the user gives it -> a validated, tokenized ``RequestGroup``."""

from __future__ import annotations

import time

from pagoda.config import ModelConfig
from pagoda.engine.request_group import RequestGroup
from pagoda.errors import InvalidRequestError
from pagoda.kv_cache.cache_key import prefix_cache_key
from pagoda.lora.request import LoRARequest
from pagoda.outputs import RequestMetrics
from pagoda.sampling_params import SamplingParams
from pagoda.tokenizer import Tokenizer


class InputProcessor:
    """Validates the prompt (text or token ids) and params, tokenizes, resolves ``max_tokens`` to the
    room left in the context, and builds the n samples (the first computes the prompt; the others
    fork from it once it is computed, sharing its KV blocks). Raises ``InvalidRequestError``."""

    def __init__(self, tokenizer: Tokenizer, model_config: ModelConfig) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = model_config.max_model_len
        self.vocab_size = model_config.vocab_size

    def process(self, request_id: str, prompt: str | list[int], params: SamplingParams, *, priority: int = 0,
                arrival_time: float | None = None, cache_salt: str | None = None,
                lora_request: LoRARequest | None = None) -> RequestGroup:
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams", "sampling_params")
        prompt_text, prompt_ids = self.tokenize(prompt)
        if params.pooling == "mean":  # every prompt row is needed: no prefix-cache hit may skip one
            cache_salt = f"{cache_salt or ''}\x00pooling:{request_id}"
        cache_salt = prefix_cache_key(cache_salt, None if lora_request is None else lora_request.lora_int_id)
        max_len = self.max_model_len
        if len(prompt_ids) >= max_len:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_ids)} tokens, but the model's context is {max_len} tokens "
                f"(leaving no room to generate)", "prompt")
        room = max_len - len(prompt_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        metrics = RequestMetrics(arrival_time=arrival_time or time.monotonic())
        group = RequestGroup.create(request_id, prompt_text, prompt_ids, params, self.tokenizer, metrics,
                                    max_tokens=max_tokens, priority=priority, cache_salt=cache_salt,
                                    lora_request=lora_request)
        first, *others = (s.request for s in group.samples)
        first.pending_forks = others
        return group

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
