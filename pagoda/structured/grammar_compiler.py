"""Compiles specs through a backend, once per (tokenizer, backend, spec): an LRU cache per tokenizer."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict

from pagoda.errors import InvalidRequestError
from pagoda.structured.backend_registry import GRAMMAR_BACKENDS
from pagoda.structured.compile_executor import CompileExecutor, call_on_deep_stack
from pagoda.structured.grammar_backend import CompiledGrammar, GrammarBackend
from pagoda.structured.guided_decoding_params import GuidedDecodingParams
from pagoda.tokenizer import Tokenizer

# single characters budget steering tries, in this order, to close a grammar quickly: closers first,
# then separators, then short values (the grammar's forced text is always taken first)
CLOSING_CHARACTERS = '"}])' + " ,:0.1aAeE-_/\n" + "".join(chr(c) for c in range(33, 127))

_CACHE_SIZE = 256
# and at most this many characters of specs: a compiled grammar's memory grows with its spec, and a storm
# of large distinct specs must not keep growing the process (the newest entry is always kept)
_CACHE_CHARS = 1 << 20
# compiles requested by the server's handlers: a costly spec occupies a thread, never the event loop;
# two threads so one slow spec does not queue every other behind it; niced, so that on shared cores the
# event loop (overload 503s, streamed tokens) runs before a compile
_server_compile_pool = CompileExecutor(2, "pagoda-grammar-validate", nice=10)


class GrammarCompiler:
    """One tokenizer's compiled grammars, by spec. Thread-safe: the server compiles in its request
    handlers, off the engine loop; a spec compiled once is a dictionary hit afterwards."""

    def __init__(self, tokenizer: Tokenizer, cache_size: int = _CACHE_SIZE, cache_chars: int = _CACHE_CHARS) -> None:
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self.cache_chars = cache_chars
        self._cached_chars = 0
        self._backends: dict[str, GrammarBackend] = {}
        self._cache: OrderedDict[GuidedDecodingParams, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.num_compiled = 0  # cache misses that compiled (hits are free)
        self._closing: tuple[int, ...] | None = None

    def closing_tokens(self) -> tuple[int, ...]:
        """Single-character tokens in budget steering's order of preference (see GuidedLogitsProcessor)."""
        if self._closing is None:
            ids = []
            for ch in CLOSING_CHARACTERS:
                encoded = self.tokenizer.encode(ch, add_special_tokens=False)
                if len(encoded) == 1 and encoded[0] not in ids:
                    ids.append(encoded[0])
            self._closing = tuple(ids)
        return self._closing

    def backend(self, name: str) -> GrammarBackend:
        with self._lock:
            if name not in self._backends:
                if name not in GRAMMAR_BACKENDS:
                    raise InvalidRequestError(f"unknown grammar backend {name!r}; choose from "
                                              f"{GRAMMAR_BACKENDS.names()}", "guided_decoding_backend")
                self._backends[name] = GRAMMAR_BACKENDS.create(name, self.tokenizer)
            return self._backends[name]

    def compile(self, spec: GuidedDecodingParams) -> CompiledGrammar:
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        backend = self.backend(spec.backend)
        # outside the lock (compiles of different specs overlap), on a deep stack (see compile_executor)
        compiled = call_on_deep_stack(backend.compile, spec)
        with self._lock:
            self.num_compiled += 1
            if spec not in self._cache:
                self._cache[spec] = compiled
                self._cached_chars += spec.num_chars
            while len(self._cache) > 1 and (len(self._cache) > self.cache_size
                                            or self._cached_chars > self.cache_chars):
                self._cached_chars -= self._cache.popitem(last=False)[0].num_chars
        return compiled


_compilers: weakref.WeakKeyDictionary[Tokenizer, GrammarCompiler] = weakref.WeakKeyDictionary()
_compilers_lock = threading.Lock()


def compiler_for(tokenizer: Tokenizer) -> GrammarCompiler:
    """The tokenizer's compiler (its backends hold per-tokenizer tables that take ~0.5 s to build)."""
    with _compilers_lock:
        compiler = _compilers.get(tokenizer)
        if compiler is None:
            compiler = _compilers[tokenizer] = GrammarCompiler(tokenizer)
        return compiler


async def compile_off_loop(compiler: GrammarCompiler, spec: GuidedDecodingParams, timeout_s: float) -> CompiledGrammar:
    """``compiler.compile(spec)`` in a worker thread, so the event loop serves others meanwhile.
    Past ``timeout_s`` an InvalidRequestError naming the spec's field; the compile itself runs on to
    its end (Rust code cannot be interrupted; llguidance's own limits bound it) and is cached."""
    future = asyncio.get_running_loop().run_in_executor(_server_compile_pool, compiler.compile, spec)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)
    except TimeoutError:
        raise InvalidRequestError(f"the {spec.kind} spec did not compile within {timeout_s:g} s "
                                  "(--grammar-compile-timeout)", spec.param) from None
