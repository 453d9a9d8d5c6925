"""Per-request sampling parameters (vLLM-shaped), validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagoda.errors import InvalidRequestError
from pagoda.logits_processor import LogitsProcessor  # the hooks' protocols: pagoda.logits_processor

_GREEDY_EPS = 1e-5


def _check_type(name: str, value: Any, types: tuple[type, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    # bool is an int subclass; never accept it where a number is wanted
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise InvalidRequestError(f"{name} must be {expected}, got {type(value).__name__}: {value!r}", name)


@dataclass
class SamplingParams:
    """How to sample one request. ``temperature=0`` is greedy.

    Logprobs (``logprobs``, ``prompt_logprobs``) are the model's raw log-softmax, before
    temperature, penalties or truncation, as in vLLM.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives returned per generated token
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    # embeddings: "last" or "mean" returns the pooled final hidden state of the prompt (RequestOutput
    # extra["embedding"], float32, not normalised) instead of sampling
    pooling: str | None = None

    def __post_init__(self) -> None:
        _check_type("n", self.n, (int,))
        if self.n < 1:
            raise InvalidRequestError(f"n must be at least 1, got {self.n}", "n")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                     "presence_penalty"):
            _check_type(name, getattr(self, name), (int, float))
            setattr(self, name, float(getattr(self, name)))
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be non-negative, got {self.temperature}", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        _check_type("top_k", self.top_k, (int,))
        if self.top_k < -1:
            raise InvalidRequestError(f"top_k must be -1 (disabled) or positive, got {self.top_k}", "top_k")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        if self.repetition_penalty <= 0:
            raise InvalidRequestError(
                f"repetition_penalty must be positive, got {self.repetition_penalty}", "repetition_penalty")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}", name)
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise InvalidRequestError("logit_bias must be a mapping of token id to bias", "logit_bias")
            bias: dict[int, float] = {}
            for k, v in self.logit_bias.items():
                try:
                    tok = int(k)
                except (TypeError, ValueError):
                    raise InvalidRequestError(f"logit_bias key {k!r} is not a token id", "logit_bias") from None
                _check_type("logit_bias value", v, (int, float))
                if not -100 <= v <= 100:
                    raise InvalidRequestError(f"logit_bias values must be in [-100, 100], got {v}", "logit_bias")
                bias[tok] = float(v)
            self.logit_bias = bias
        _check_type("seed", self.seed, (int,), allow_none=True)
        if self.pooling not in (None, "last", "mean"):
            raise InvalidRequestError(f"pooling must be 'last' or 'mean', got {self.pooling!r}", "pooling")
        if self.pooling is not None and self.n != 1:
            raise InvalidRequestError("a pooling (embedding) request has one output: n must be 1", "n")
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise InvalidRequestError("stop must be a string or a list of strings", "stop")
        if any(s == "" for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty", "stop")
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if not isinstance(self.stop_token_ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in self.stop_token_ids):
            raise InvalidRequestError("stop_token_ids must be a list of integers", "stop_token_ids")
        _check_type("max_tokens", self.max_tokens, (int,), allow_none=True)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens")
        _check_type("min_tokens", self.min_tokens, (int,))
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise InvalidRequestError("min_tokens must be in [0, max_tokens]", "min_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            _check_type(name, getattr(self, name), (int,), allow_none=True)
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 20:
                raise InvalidRequestError(f"{name} must be in [0, 20], got {getattr(self, name)}", name)
        if not isinstance(self.logits_processors, list) or not all(callable(p) for p in self.logits_processors):
            raise InvalidRequestError("logits_processors must be a list of callables", "logits_processors")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS
