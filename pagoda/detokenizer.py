"""Incremental detokenization with stop strings, for streaming one request's output.

Decoding every step's full output would cost O(length) per token. Like vLLM's
`detokenize_incrementally`, we decode only a small window: the tokens from `prefix_offset`
(already turned into text, kept as context so that merges and leading spaces come out right)
to the end, and emit what the window adds past its committed part. A window whose text ends in
U+FFFD stops mid UTF-8 character (a byte-level token holding part of an emoji, say): it is held
back until the next token completes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pagoda.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    """Output text of one request, built token by token.

    Contract: after the last `update`, `output_text` equals `tokenizer.decode(output ids)`
    (cut at the stop string, if one matched). `get_delta` returns text that is final: it never
    includes a partial character, nor, while unfinished, the last `len(longest stop) - 1`
    characters that a stop string might still claim.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True,
                 stop: Sequence[str] = (), include_stop_str_in_output: bool = False) -> None:
        self.tokenizer = tokenizer
        # Decoding starts at the first output token (no prompt context), so that the text equals
        # decode(output ids) exactly: a sentencepiece decoder strips the first token's space.
        self.prompt_token_ids = list(prompt_token_ids)
        self.skip_special_tokens = skip_special_tokens
        self.stop = [s for s in stop if s]
        self.include_stop_str_in_output = include_stop_str_in_output
        # Text within this many characters of the end may still become part of a stop string.
        self.stop_buffer_length = max(map(len, self.stop)) - 1 if self.stop and not include_stop_str_in_output else 0
        self.token_ids: list[int] = []
        self.stop_reason: str | None = None
        self._text = ""  # committed text: complete characters only
        self._pending = ""  # what the window decodes to past `_text` while it ends mid-character
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""  # decode(token_ids[prefix_offset:read_offset])
        self._sent = 0  # characters already returned by get_delta

    @property
    def output_text(self) -> str:
        """All text so far (with a partial character's U+FFFD at the end, as decode() would give)."""
        return self._text + self._pending

    def update(self, new_token_ids: Sequence[int]) -> str | None:
        """Append tokens; return the stop string if one now appears (the text is then cut at it)."""
        if self.stop_reason is not None:
            raise RuntimeError("update() after a stop string matched")
        check_from = len(self._text)
        for token_id in new_token_ids:
            self.token_ids.append(token_id)
            self._text += self._decode_next()
        if not self.stop or len(self._text) == check_from:
            return None
        match = _find_stop(self._text, len(self._text) - check_from, self.stop, self.include_stop_str_in_output)
        if match is not None:
            self.stop_reason, cut = match
            self._text, self._pending = self._text[:cut], ""
        return self.stop_reason

    def get_delta(self, finished: bool) -> str:
        """New text since the last call that is safe to stream; everything that is left once finished."""
        if finished:
            text, end = self.output_text, len(self.output_text)
        else:
            text = self._text
            end = max(len(text) - self.stop_buffer_length, self._sent)
        delta, self._sent = text[self._sent:end], end
        return delta

    def _decode_next(self) -> str:
        """The text the newest token completes (maybe ""), moving the window forward when it does."""
        window = self.token_ids[self._prefix_offset:]
        text = self.tokenizer.decode(window, skip_special_tokens=self.skip_special_tokens)
        if len(text) <= len(self._prefix_text):  # e.g. a skipped special token: nothing new yet
            return ""
        if text.endswith(_INCOMPLETE):
            self._pending = text[len(self._prefix_text):]
            return ""
        new_text = text[len(self._prefix_text):]
        self._pending = ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        self._prefix_text = self.tokenizer.decode(self.token_ids[self._prefix_offset:self._read_offset],
                                                  skip_special_tokens=self.skip_special_tokens)
        return new_text


def _find_stop(text: str, new_chars: int, stop: list[str], include: bool) -> tuple[str, int] | None:
    """(stop string, length to cut the text to) for the stop string the new characters complete first.

    "First" is the earliest end (then the earliest start), so that feeding tokens one by one or many
    at once (speculative decoding) stops at the same place.
    """
    best: tuple[int, int, str] | None = None
    for s in stop:
        # Only matches that overlap the new characters are new (older text was checked before).
        index = text.find(s, max(0, len(text) - new_chars - len(s) + 1))
        if index != -1 and (best is None or (index + len(s), index) < best[:2]):
            best = (index + len(s), index, s)
    if best is None:
        return None
    end, index, s = best
    return s, end if include else index
