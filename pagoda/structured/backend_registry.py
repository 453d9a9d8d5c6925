"""Grammar backends by name (llguidance built in; xgrammar or others may register themselves)."""

from __future__ import annotations

from collections.abc import Callable

from pagoda.errors import InvalidRequestError
from pagoda.structured.grammar_backend import GrammarBackend
from pagoda.tokenizer import Tokenizer

BackendFactory = Callable[[Tokenizer], GrammarBackend]


def _llguidance(tokenizer: Tokenizer) -> GrammarBackend:
    from pagoda.structured.llguidance_backend import LLGuidanceBackend

    return LLGuidanceBackend(tokenizer)


_BACKENDS: dict[str, BackendFactory] = {"llguidance": _llguidance}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Registers a backend factory (called once per tokenizer) under ``name``."""
    _BACKENDS[name] = factory


def backend_factory(name: str) -> BackendFactory:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise InvalidRequestError(f"unknown grammar backend {name!r}; available: {sorted(_BACKENDS)}",
                                  "guided_decoding_backend") from None
