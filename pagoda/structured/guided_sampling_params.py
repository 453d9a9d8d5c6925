"""Building SamplingParams with a constraint in one call."""

from __future__ import annotations

from typing import Any

from pagoda.sampling_params import SamplingParams
from pagoda.structured.guided_decoding_params import GuidedDecodingParams
from pagoda.structured.guided_logits_processor import guided_logits_processor
from pagoda.tokenizer import Tokenizer


def tokenizer_of(source: Any) -> Tokenizer:
    """The tokenizer of an ``LLM``, an ``LLMEngine`` or a ``Tokenizer`` itself."""
    if isinstance(source, Tokenizer):
        return source
    engine = getattr(source, "engine", source)
    tokenizer = getattr(engine, "tokenizer", None)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"expected an LLM, LLMEngine or Tokenizer, got {type(source).__name__}")
    return tokenizer


def guided_sampling_params(source: Any, guided: GuidedDecodingParams | None = None, *,
                           json: Any = None, json_object: bool = False, regex: str | None = None,
                           choice: list[str] | None = None, grammar: str | None = None,
                           whitespace: str = "compact", jump_forward: bool = True, budget_steering: bool = True,
                           **sampling: Any) -> SamplingParams:
    """``SamplingParams(**sampling)`` constrained by ``guided`` (or the spec given by keyword), e.g.
    ``guided_sampling_params(llm, json=schema, max_tokens=200, temperature=0)``.

    ``source`` is the LLM, engine or tokenizer the request will run on; the spec is compiled here
    (cached), so an invalid one raises InvalidRequestError before anything is queued.
    """
    if guided is None:
        guided = GuidedDecodingParams(json=json, json_object=json_object, regex=regex,
                                      choice=tuple(choice) if choice is not None else None,
                                      grammar=grammar, whitespace=whitespace)  # type: ignore[arg-type]
    max_tokens = sampling.get("max_tokens", SamplingParams.max_tokens) if budget_steering else None
    processor = guided_logits_processor(guided, tokenizer_of(source), jump_forward=jump_forward, max_tokens=max_tokens)
    processors = list(sampling.pop("logits_processors", None) or [])
    return SamplingParams(logits_processors=[*processors, processor], **sampling)
