"""A constrained request's logits processor: grammar masks each step, forced tokens jump forward."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from pagoda.structured.grammar_backend import CompiledGrammar, GrammarMatcher
from pagoda.structured.grammar_compiler import compiler_for
from pagoda.structured.guided_decoding_params import GuidedDecodingParams
from pagoda.structured.token_bitmask import (
    allow_only_,
    allowed_token_ids,
    apply_token_bitmask_,
    bitmask_words,
)
from pagoda.tokenizer import Tokenizer

_MAX_FORCED_PER_CALL = 256  # bounds one jump; the rest follows after the next step
_STEER_HORIZON = 64  # budget steering looks for a way to close the grammar once this few tokens are left
# steering starts while the closing path plus eos plus this many tokens still fit: one free token can
# lengthen the path by several (the first byte of a 4-byte character needs 3 more before a quote)
_STEER_MARGIN = 4


@dataclass
class MaskStats:
    """Shared by a processor and its clones (the benchmark reads the grammar time per token)."""

    seconds: float = 0.0  # in the sampling hooks: checks and masks
    num_checks: int = 0  # drawn tokens put to ``verify_draw``
    num_rejected: int = 0  # of those, refused (the sampler then masks and draws again)
    num_masks: int = 0  # logits rows masked
    num_forced: int = 0  # tokens returned for jump-forward

    @property
    def num_tokens(self) -> int:
        """Tokens sampled under the constraint: each is either checked and kept, or masked."""
        return self.num_checks - self.num_rejected + self.num_masks


@dataclass(eq=False)
class _Sequence:
    token_ids: Sequence[int]  # the engine's list (held so its id() is not reused while we key on it)
    matcher: GrammarMatcher
    bitmask: np.ndarray
    num_accepted: int = 0
    forced_at: int = -1  # num_accepted when `forced` was computed
    forced: list[int] = field(default_factory=list)
    steering: bool = False  # closing the grammar to fit the token budget (never switched off)


class GuidedLogitsProcessor:
    """``proc(output_token_ids, logits_row) -> logits_row`` for the engine's logits-processor hook.

    State per sequence is keyed by the identity of its output-token list (the engine passes each
    sequence's own list, appended in place), so one processor may serve several prompts; on each
    call the matcher catches up on the tokens it has not seen (several after a jump-forward) and
    rolls back any it accepted that the engine did not keep.

    Masking policy, the same stepwise and with jump-forward (so outputs are identical): when the
    grammar has terminated only eos is allowed; when it forces text, only the first token of its
    canonical tokenization is; otherwise the grammar's bitmask applies (eos allowed where it
    accepts). ``forced_tokens`` returns exactly the tokens this policy leaves no choice about.

    ``verify_draw`` applies the same policy to one drawn token, so a sampler may draw first and
    mask only when the draw is refused (a few us, where a bitmask costs ~15 us and masking ~5 us
    more).

    Budget steering (with ``max_tokens`` and ``closing_tokens``): once at most ``_STEER_HORIZON``
    tokens are left, each step simulates a greedy closing path (the grammar's forced tokens, else
    the first allowed of ``closing_tokens``, until the text is a complete match). When that path
    plus eos plus ``_STEER_MARGIN`` no longer fits in what is left, the sequence follows it (then
    eos), so an output that would have been cut off ends as a valid match. Before that point nothing changes: an output
    that ends earlier is token for token the unsteered one.
    """

    def __init__(self, compiled: CompiledGrammar | Future[CompiledGrammar], eos_token_id: int, *,
                 jump_forward: bool = True, stats: MaskStats | None = None, max_tokens: int | None = None,
                 closing_tokens: Sequence[int] = ()) -> None:
        self._compiled = compiled  # a Future while it compiles in the background (see ready())
        self.eos_token_id = eos_token_id
        self.jump_forward = jump_forward
        self.stats = stats or MaskStats()
        self.max_tokens = max_tokens
        self.closing_tokens = tuple(closing_tokens)
        self._sequences: dict[int, _Sequence] = {}

    def ready(self) -> bool:
        """False while the grammar still compiles (the engine schedules the request once it is ready)."""
        return not isinstance(self._compiled, Future) or self._compiled.done()

    @property
    def compiled(self) -> CompiledGrammar:
        if isinstance(self._compiled, Future):
            self._compiled = self._compiled.result()
        return self._compiled

    @property
    def spec(self) -> GuidedDecodingParams:
        return self.compiled.spec

    def clone(self) -> GuidedLogitsProcessor:
        return GuidedLogitsProcessor(self._compiled, self.eos_token_id, jump_forward=self.jump_forward,
                                     stats=self.stats, max_tokens=self.max_tokens, closing_tokens=self.closing_tokens)

    # -- the engine's hooks -------------------------------------------------------------
    def __call__(self, output_token_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        seq = self._sync(output_token_ids)
        only = self._only_choice(seq)
        if only is not None:
            allow_only_(logits, only)
        else:
            seq.matcher.fill_bitmask(seq.bitmask)
            apply_token_bitmask_(logits, seq.bitmask)
        self.stats.seconds += time.perf_counter() - start
        self.stats.num_masks += 1
        return logits

    def verify_draw(self, output_token_ids: Sequence[int], token_id: int) -> int | None:
        """The token to emit where a sampler drew ``token_id`` from the unmasked row: the drawn
        token when ``__call__`` would leave it allowed, the only token it allows when there is just
        one (forced text, eos), else None (the sampler masks the row and draws again)."""
        start = time.perf_counter()
        seq = self._sync(output_token_ids)
        only = self._only_choice(seq)
        verified: int | None = token_id
        if only is None and not seq.matcher.allows(token_id):
            self.stats.num_rejected += 1
            verified = None
        self.stats.seconds += time.perf_counter() - start
        self.stats.num_checks += 1
        return verified if only is None else only

    def forced_tokens(self, output_token_ids: Sequence[int]) -> list[int]:
        """The tokens stepwise decoding would have no choice about, accepted into the matcher (rolled
        back on the next call if the engine keeps fewer). Never raises: a broken sequence fails in
        ``__call__``, where the engine reports it for that request."""
        if not self.jump_forward:
            return []
        try:
            seq = self._sync(output_token_ids)
            forced: list[int] = []
            while len(forced) < _MAX_FORCED_PER_CALL:
                only = self._only_choice(seq)
                if only is None:
                    break
                forced.append(only)
                if only == self.eos_token_id:
                    self._sequences.pop(id(output_token_ids), None)  # finished: nothing more to track
                    break
                self._accept(seq, [only])
        except Exception:  # noqa: BLE001  (the engine does not guard this hook)
            return []
        self.stats.num_forced += len(forced)
        return forced

    # -- state ------------------------------------------------------------------------------
    def _sync(self, token_ids: Sequence[int]) -> _Sequence:
        seq = self._sequences.get(id(token_ids))
        if seq is None or seq.token_ids is not token_ids:
            matcher = self.compiled.new_matcher()
            seq = _Sequence(token_ids, matcher, np.zeros(bitmask_words(matcher.vocab_size), dtype=np.int32))
            self._sequences[id(token_ids)] = seq
        if len(token_ids) < seq.num_accepted:  # jump-forward tokens the engine did not append
            seq.matcher.rollback(seq.num_accepted - len(token_ids))
            seq.num_accepted = len(token_ids)
        if len(token_ids) > seq.num_accepted:
            self._accept(seq, list(token_ids[seq.num_accepted:]))
        return seq

    @staticmethod
    def _accept(seq: _Sequence, tokens: list[int]) -> None:
        if not seq.matcher.accept_tokens(tokens):
            raise ValueError(f"generated tokens {tokens} break the {seq.matcher.__class__.__name__} "
                             f"grammar: {seq.matcher.error}")
        seq.num_accepted += len(tokens)

    def _only_choice(self, seq: _Sequence) -> int | None:
        """The single token the policy allows next, or None when the bitmask decides."""
        if seq.matcher.is_terminated():
            return self.eos_token_id
        if seq.forced_at != seq.num_accepted:
            seq.forced = seq.matcher.forced_tokens()
            seq.forced_at = seq.num_accepted
        if seq.forced:
            return seq.forced[0]
        return self._steer(seq)

    def _steer(self, seq: _Sequence) -> int | None:
        """The next token of the closing path once the budget requires it, else None."""
        if self.max_tokens is None or not self.closing_tokens:
            return None
        left = self.max_tokens - seq.num_accepted
        if left > _STEER_HORIZON or left <= 0:
            return None
        if seq.matcher.is_accepting():
            # steering ends with eos; before it starts, a text that is already a complete match stays
            # valid wherever max_tokens cuts it (prose under a tool "auto" grammar, a regex's repetition)
            return self.eos_token_id if seq.steering else None
        path = self._closing_path(seq.matcher, left)
        if path is None:
            return None
        if not seq.steering and len(path) + 1 + _STEER_MARGIN < left:
            return None  # it still fits with room to spare: leave the model free
        seq.steering = True
        return path[0] if path else self.eos_token_id

    def _closing_choice(self, matcher: GrammarMatcher) -> int | None:
        """The first allowed closing token that completes the match, else the first allowed one (so a
        separator that only starts another repetition is not taken when a terminator is allowed)."""
        first, checked = None, 0
        for t in self.closing_tokens:
            if not matcher.allows(t):
                continue
            first = t if first is None else first
            matcher.accept_tokens([t])
            done = matcher.is_accepting()
            matcher.rollback(1)
            if done:
                return t
            checked += 1
            if checked >= _LOOKAHEAD:
                break
        return first

    def _closing_path(self, matcher: GrammarMatcher, limit: int) -> list[int] | None:
        """A short token path from the matcher's state to a complete match (within ``limit`` tokens),
        found greedily; the matcher is left where it was."""
        path: list[int] = []
        found = False
        try:
            while True:
                if matcher.is_accepting():
                    found = True
                    break
                if len(path) >= limit or matcher.is_terminated():
                    break
                forced = matcher.forced_tokens()
                token = forced[0] if forced else self._closing_choice(matcher)
                if token is None:  # e.g. inside a multi-byte character: any allowed token goes on
                    token = _first_allowed(matcher)
                if token is None or not matcher.accept_tokens([token]):
                    break
                path.append(token)
        finally:
            matcher.rollback(len(path))
        return path if found else None


_LOOKAHEAD = 12  # allowed closing tokens checked for one that completes the match at once


def _first_allowed(matcher: GrammarMatcher) -> int | None:
    mask = np.zeros(bitmask_words(matcher.vocab_size), dtype=np.int32)
    matcher.fill_bitmask(mask)
    allowed = allowed_token_ids(mask, matcher.vocab_size)
    return int(allowed[0]) if allowed.size else None


def guided_logits_processor(spec: GuidedDecodingParams, tokenizer: Tokenizer, *,
                            jump_forward: bool = True, max_tokens: int | None = None) -> GuidedLogitsProcessor:
    """Compiles ``spec`` for ``tokenizer`` (cached by spec; raises InvalidRequestError naming the
    problem) and returns a fresh processor. Call it where the request is built, not in the engine loop.
    With ``max_tokens`` (the request's) the output is steered to a complete match before the budget ends."""
    if tokenizer.eos_token_id is None:
        raise ValueError("constrained decoding needs a tokenizer with an eos token")
    compiler = compiler_for(tokenizer)
    compiled = compiler.compile(spec)
    return GuidedLogitsProcessor(compiled, tokenizer.eos_token_id, jump_forward=jump_forward, max_tokens=max_tokens,
                                 closing_tokens=compiler.closing_tokens() if max_tokens is not None else ())
