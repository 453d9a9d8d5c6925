"""Structured outputs: JSON schema, any JSON object, regex, choice and Lark/GBNF grammars.

A spec (``GuidedDecodingParams``) is compiled by a ``GrammarBackend`` (llguidance by default,
others through ``GRAMMAR_BACKENDS.register``) into a grammar shared by all requests with that spec; each
request's ``GuidedLogitsProcessor`` masks the logits through the engine's logits-processor hook and
hands grammar-forced tokens to the engine's jump-forward.

    from pagoda import LLM
    from pagoda.structured import guided_sampling_params
    llm = LLM()
    params = guided_sampling_params(llm, json=schema, max_tokens=256, temperature=0)
    llm.generate(prompt, params)
"""

from pagoda.structured.backend_registry import GRAMMAR_BACKENDS
from pagoda.structured.grammar_backend import CompiledGrammar, GrammarBackend, GrammarMatcher
from pagoda.structured.grammar_compiler import GrammarCompiler, compiler_for
from pagoda.structured.guided_decoding_params import GuidedDecodingParams
from pagoda.structured.guided_logits_processor import (
    GuidedLogitsProcessor,
    MaskStats,
    guided_logits_processor,
)
from pagoda.structured.guided_sampling_params import guided_sampling_params, tokenizer_of

__all__ = [
    "GRAMMAR_BACKENDS",
    "CompiledGrammar",
    "GrammarBackend",
    "GrammarCompiler",
    "GrammarMatcher",
    "GuidedDecodingParams",
    "GuidedLogitsProcessor",
    "MaskStats",
    "compiler_for",
    "guided_logits_processor",
    "guided_sampling_params",
    "tokenizer_of",
]
