"""Grammar backends by name (llguidance built in; xgrammar or others may register themselves).

A creator is called once per tokenizer: ``GRAMMAR_BACKENDS.create(name, tokenizer) -> GrammarBackend``.
"""

from __future__ import annotations

from pagoda.registry import Registry
from pagoda.structured.grammar_backend import GrammarBackend
from pagoda.tokenizer import Tokenizer

GRAMMAR_BACKENDS: Registry[GrammarBackend] = Registry("grammar backend")


@GRAMMAR_BACKENDS.register("llguidance")
def _llguidance(tokenizer: Tokenizer) -> GrammarBackend:
    from pagoda.structured.llguidance_backend import LLGuidanceBackend

    return LLGuidanceBackend(tokenizer)
