"""Prompt tokenization that never holds the event loop for long.

A 4 MiB prompt takes the tokenizer seconds (6-8 s for the bundled model's on this machine, 2026-12-03); done
in a request handler it would stall every other request on the loop (503s, streamed tokens, /health)
meanwhile. Prompts longer than ``inline_chars`` are
tokenized on a worker thread through the fast tokenizer's batch call, which releases the GIL while its
Rust code runs (its single-text call does not); shorter ones stay inline, where a thread hop would cost
more than the tokenization itself.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from pagoda.tokenizer import Tokenizer

INLINE_CHARS = 4096  # a prompt this long tokenizes in about a millisecond: not worth a thread hop

# two threads: one huge prompt does not queue every other large one behind it
_pool = ThreadPoolExecutor(2, thread_name_prefix="pagoda-tokenize")


class PromptTokenizer:
    """``await encode(text, add_special_tokens)``: the same ids as ``tokenizer.encode``, off the loop when
    the text is long."""

    def __init__(self, tokenizer: Tokenizer, inline_chars: int = INLINE_CHARS) -> None:
        self.tokenizer = tokenizer
        self.inline_chars = inline_chars

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) <= self.inline_chars:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return await asyncio.get_running_loop().run_in_executor(_pool, self._encode_releasing_gil, text,
                                                                add_special_tokens)

    def _encode_releasing_gil(self, text: str, add_special_tokens: bool) -> list[int]:
        backend = getattr(self.tokenizer, "backend", None)
        if backend is None:  # not a fast tokenizer (a test's stand-in): its own encode, on this thread
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
