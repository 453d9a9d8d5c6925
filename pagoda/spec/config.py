"""``speculative_config``: what users write (vLLM's shape), checked once at start.

This module imports no torch, so ``EngineArgs`` can validate it while parsing the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram", "draft_model")
COST_MODELS = ("measured", "linear")


@dataclass(frozen=True)
class SpeculativeConfig:
    """How requests are speculated.

    - ``method``: "ngram" proposes the tokens that followed the latest earlier occurrence of the
      request's last n tokens (n from ``prompt_lookup_max`` down to ``prompt_lookup_min``) in its
      own prompt and output: no extra weights. "draft_model" runs a smaller model with the same
      vocabulary (``model``) greedily for k steps per engine step, on its own KV cache.
    - ``num_speculative_tokens``: the most tokens proposed per step (k); the adaptive policy may
      propose fewer, or none, per request.
    - ``model``: the draft's Hugging Face directory or GGUF file (draft_model). Omitted, with
      ``draft_num_layers``: the target model itself.
    - ``draft_num_layers``: keep only the draft's first N decoder layers (then its final norm and
      LM head). With ``model`` omitted or the target's own path, the draft shares the target's
      weights: a "self-draft" that costs no weight memory, only its own KV cache (N layers' worth).
    - ``adaptive``: off, every request proposes k tokens whenever a match is found. On, the step's
      decoding requests get the proposals that maximise the step's expected tokens per second, from
      each one's measured acceptance rate and the step's cost by its rows
      (``pagoda.spec.proposal_plan``).
    - ``cost_model``: "measured" learns a step's cost by its number of rows from the engine's own
      decode steps (``pagoda.spec.step_cost``); "linear" keeps the prior below for good.
    - ``step_overhead_rows``: the prior cost model, used for row counts not yet measured: a step
      costs about ``a + b * rows``, and this is ``a / b`` (how many rows' work the per-step
      overhead is worth).
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    model: str | None = None
    draft_num_layers: int | None = None
    adaptive: bool = True
    cost_model: str = "measured"
    step_overhead_rows: float = 8.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative_config.method must be one of {list(METHODS)}, got {self.method!r}")
        _whole("num_speculative_tokens", self.num_speculative_tokens, 1)
        _whole("prompt_lookup_min", self.prompt_lookup_min, 1)
        _whole("prompt_lookup_max", self.prompt_lookup_max, 1)
        if self.prompt_lookup_max < self.prompt_lookup_min:
            raise ValueError(f"speculative_config.prompt_lookup_max ({self.prompt_lookup_max}) must be >= "
                             f"prompt_lookup_min ({self.prompt_lookup_min})")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"speculative_config.adaptive must be true or false, got {self.adaptive!r}")
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"speculative_config.cost_model must be one of {list(COST_MODELS)}, "
                             f"got {self.cost_model!r}")
        if isinstance(self.step_overhead_rows, bool) or not isinstance(self.step_overhead_rows, int | float) \
                or self.step_overhead_rows < 0:
            raise ValueError(f"speculative_config.step_overhead_rows must be a number >= 0, "
                             f"got {self.step_overhead_rows!r}")
        if self.method == "draft_model" and not self.model and self.draft_num_layers is None:
            raise ValueError("speculative_config.model (or draft_num_layers, for a draft cut from the target "
                             "itself) is required with method 'draft_model'")
        if self.draft_num_layers is not None:
            _whole("draft_num_layers", self.draft_num_layers, 1)
        for name in ("model", "draft_num_layers"):
            if self.method != "draft_model" and getattr(self, name) is not None:
                raise ValueError(f"speculative_config.{name} only applies to method 'draft_model', "
                                 f"not {self.method!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"speculative_config.model must be a path, got {self.model!r}")

    @classmethod
    def from_dict(cls, options: dict[str, Any] | str) -> SpeculativeConfig:
        """From the user's dict (or its JSON text); an unknown key is an error naming it."""
        if isinstance(options, str):
            try:
                options = json.loads(options)
            except json.JSONDecodeError as exc:
                raise ValueError(f"speculative_config is not valid JSON: {exc}") from None
        if isinstance(options, SpeculativeConfig):
            return options
        if not isinstance(options, dict):
            raise ValueError(f"speculative_config must be a JSON object, got {type(options).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"speculative_config has unknown field(s) {unknown}; known: {sorted(known)}")
        if "method" not in options:
            raise ValueError("speculative_config.method is required (e.g. \"ngram\")")
        return cls(**options)


def _whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"speculative_config.{name} must be a whole number >= {low}, got {value!r}")
