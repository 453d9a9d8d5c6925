"""Grammar work is bounded and can never take the process down: deep rule chains compile on deep-stack
threads (a 3,000-rule chain overflowed a default thread stack: a segfault of the whole server), wide
alternatives pass llguidance's row limit, and the server's compile has a time limit naming the field."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import numpy as np
import pytest

from pagoda.errors import InvalidRequestError
from pagoda.structured.grammar_compiler import GrammarCompiler, compile_off_loop
from pagoda.structured.guided_decoding_params import GuidedDecodingParams
from pagoda.weights.model_loader import ModelFiles


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return ModelFiles(tiny_llama_dir).tokenizer(None)


def chain(n: int) -> str:
    return "start: r0\n" + "\n".join(f'r{j}: "x" r{j + 1} | "y"' for j in range(n)) + f'\nr{n}: "z"'


def test_a_deep_rule_chain_compiles_and_matches(tokenizer):
    compiled = GrammarCompiler(tokenizer).compile(GuidedDecodingParams(grammar=chain(3000)))
    matcher = compiled.new_matcher()
    x, y = (tokenizer.encode(c, add_special_tokens=False) for c in "xy")
    assert len(x) == len(y) == 1
    assert matcher.accept_tokens(x * 40 + y) and matcher.is_accepting()


def test_three_thousand_alternatives_pass_the_row_limit(tokenizer):
    words = [f"w{i}" for i in range(3000)]
    matcher = GrammarCompiler(tokenizer).compile(
        GuidedDecodingParams(grammar="start: " + " | ".join(f'"{w}"' for w in words))).new_matcher()
    assert matcher.accept_tokens(tokenizer.encode("w1234", add_special_tokens=False)), matcher.error
    mask = np.zeros((matcher.vocab_size + 31) // 32, dtype=np.int32)
    matcher.fill_bitmask(mask)
    assert matcher.error is None and matcher.is_accepting()


def test_compile_off_loop_times_out_naming_the_field(tokenizer):
    compiler = GrammarCompiler(tokenizer)
    spec = GuidedDecodingParams(grammar="start: " + " | ".join(f'"t{i}"' for i in range(3000)))
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(compile_off_loop(compiler, spec, 0.0001))
    assert info.value.param == "guided_grammar" and "--grammar-compile-timeout" in info.value.message
    assert asyncio.run(compile_off_loop(compiler, spec, 60.0)).spec == spec  # and a patient caller gets it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux only")
def test_server_compiles_run_niced_below_the_event_loop():
    """On shared cores the event loop (503s, streamed tokens) runs before a compile: the server's compile
    threads are niced, the rest of the process is not."""
    from pagoda.structured.grammar_compiler import _server_compile_pool

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert _server_compile_pool.submit(niceness).result() == min(19, niceness() + _server_compile_pool.nice)
