"""The grammar backend boundary: compile a spec once, then one matcher per sequence."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pagoda.structured.guided_decoding_params import GuidedDecodingParams


class GrammarMatcher(ABC):
    """The state of one sequence in a compiled grammar.

    Contract: tokens are accepted in order; ``accept_tokens`` returns False (and the matcher stays in
    an error state, ``error`` says why) as soon as one breaks the grammar. ``fill_bitmask`` writes the
    tokens allowed next, one bit per token id (bit ``t % 32`` of word ``t // 32``), for the
    ``vocab_size`` ids the backend knows; eos bits are set only where the grammar accepts.
    ``forced_tokens`` are the tokens the grammar forces next, in the tokenizer's canonical
    tokenization of the forced text; while it is non-empty its first token is the only one to allow.
    ``allows`` tests one token against the grammar without advancing; where nothing is forced and
    the grammar has not terminated it agrees with the bitmask (a test checks this along random walks).
    """

    vocab_size: int

    @abstractmethod
    def fill_bitmask(self, out: np.ndarray) -> None:
        """Writes the allowed-next bitmask into ``out`` (int32, ``(vocab_size + 31) // 32`` words)."""

    @abstractmethod
    def allows(self, token: int) -> bool:
        """True when ``token`` may come next (the matcher does not advance)."""

    @abstractmethod
    def accept_tokens(self, tokens: list[int]) -> bool:
        """Advances by ``tokens``; False if one is not allowed (the matcher is then in error)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undoes the last ``num_tokens`` accepted tokens."""

    @abstractmethod
    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (empty when the next token is a real choice)."""

    @abstractmethod
    def is_accepting(self) -> bool:
        """True when the text so far is a complete match (eos may come next)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True when nothing but eos may come next."""

    @property
    @abstractmethod
    def error(self) -> str | None:
        """Why the matcher is in error, or None."""


class CompiledGrammar(ABC):
    """A spec compiled for one tokenizer; immutable and shared by all sequences using the spec."""

    spec: GuidedDecodingParams

    @abstractmethod
    def new_matcher(self) -> GrammarMatcher:
        """A matcher at the grammar's start."""


class GrammarBackend(ABC):
    """Compiles specs for one tokenizer.

    Contract: ``compile`` is pure and thread-safe (callers cache by spec and run it off the engine
    loop) and raises ``InvalidRequestError`` naming the problem for an invalid or unsupported spec,
    so a bad spec never reaches the engine.
    """

    name: str

    @abstractmethod
    def compile(self, spec: GuidedDecodingParams) -> CompiledGrammar:
        """Compiles ``spec``; raises InvalidRequestError(message, spec.param) when it cannot."""
