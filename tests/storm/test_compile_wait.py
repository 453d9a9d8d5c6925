"""A guided request whose grammar is still compiling waits by itself: the engine keeps stepping the other
requests (all their tokens arrive while the compile is held), then runs the guided one once its grammar is
ready, with exactly the output it has when its grammar is compiled up front."""

from __future__ import annotations

import threading
import time

import pytest

from pagoda import LLM, SamplingParams
from pagoda.engine.request import RequestStatus
from pagoda.structured.backend_registry import GRAMMAR_BACKENDS
from pagoda.structured.deferred_processor import DeferredGuidedProcessor, bind_deferred_processors
from pagoda.structured.grammar_backend import CompiledGrammar, GrammarBackend
from pagoda.structured.guided_decoding_params import GuidedDecodingParams
from pagoda.structured.guided_logits_processor import guided_logits_processor
from pagoda.structured.llguidance_backend import LLGuidanceBackend

HELD = "test-held-llguidance"
release = threading.Event()  # the held backend's compiles finish once this is set


class HeldBackend(GrammarBackend):
    """llguidance, with every compile held until ``release`` is set (a compile as slow as the test wants)."""

    name = HELD

    def __init__(self, tokenizer) -> None:
        self.inner = LLGuidanceBackend(tokenizer)

    def compile(self, spec: GuidedDecodingParams) -> CompiledGrammar:
        if not release.wait(timeout=120):
            raise TimeoutError("the test never released the compile")
        return self.inner.compile(spec)


PROMPT_GUIDED, PROMPT_PLAIN = "The answer is", "Once upon a time"
REGEX = "[a-z]{3,10}"


@pytest.fixture
def held_backend(monkeypatch):
    """The held backend registered for this test only (the registry lists the real ones elsewhere)."""
    monkeypatch.setitem(GRAMMAR_BACKENDS._creators, HELD, HeldBackend)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    with LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=256, show_progress=False) as llm:
        yield llm


def run_until_done(engine, timeout_s: float = 60.0) -> dict[str, list[int]]:
    """Steps until nothing is left (steps that find nothing ready return at once while a grammar compiles)."""
    tokens: dict[str, list[int]] = {}
    deadline = time.monotonic() + timeout_s
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline, "the engine did not finish"
        for out in engine.step():
            tokens[out.request_id] = list(out.outputs[0].token_ids)
        if engine.last_step_idle:
            time.sleep(0.001)
    return tokens


def test_a_slow_compile_holds_its_own_request_only(llm, held_backend):
    engine, tokenizer = llm.engine, llm.get_tokenizer()
    reference = SamplingParams(max_tokens=8, temperature=0,
                               logits_processors=[guided_logits_processor(GuidedDecodingParams(regex=REGEX), tokenizer,
                                                                          max_tokens=8)])
    engine.add_request("reference", PROMPT_GUIDED, reference)
    expected = run_until_done(engine)["reference"]

    release.clear()
    try:
        spec = GuidedDecodingParams(regex=REGEX, backend=HELD)
        guided = bind_deferred_processors(SamplingParams(max_tokens=8, temperature=0,
                                                         logits_processors=[DeferredGuidedProcessor(spec)]), tokenizer)
        engine.add_request("guided", PROMPT_GUIDED, guided)
        engine.add_request("plain", PROMPT_PLAIN, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
        plain: list[int] = []
        for _ in range(200):
            outputs = {out.request_id: out for out in engine.step()}
            assert "guided" not in outputs, "the guided request ran before its grammar compiled"
            if "plain" in outputs:
                plain = list(outputs["plain"].outputs[0].token_ids)
                if outputs["plain"].finished:
                    break
        assert len(plain) == 16, "the plain request did not finish while the other's grammar compiled"
        request = engine.scheduler.requests["guided"]
        assert request.status is RequestStatus.WAITING and request.num_computed_tokens == 0
        assert not guided.logits_processors[0].ready()
    finally:
        release.set()
    assert run_until_done(engine)["guided"] == expected
    engine.check_integrity()
