"""Long prompts are tokenized off the event loop: the same ids as the tokenizer's own encode, the loop keeps
running while the Rust tokenizer works (its batch call releases the GIL; its single-text call holds it), and a
live server answers /health and a small completion while a 1 MiB prompt is being tokenized."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pagoda.server.config import ServerConfig
from pagoda.server.engine_process_client import EngineProcessClient
from pagoda.server.prompt_tokenizer import INLINE_CHARS, PromptTokenizer
from pagoda.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args  # noqa: E402

WORDS = "The quick brown fox jumps over the lazy dog; 1234 éà 中文 🙂 <|im_end|>\n"


def long_text(num_bytes: int) -> str:
    return (WORDS * (num_bytes // len(WORDS.encode()) + 1))[:num_bytes]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tiny_llama_dir)


@pytest.mark.parametrize("special", [True, False])
@pytest.mark.parametrize("size", [5, INLINE_CHARS, INLINE_CHARS + 1, 300_000])
def test_same_ids_as_encode(tokenizer, size, special):
    text = long_text(size)
    ids = asyncio.run(PromptTokenizer(tokenizer).encode(text, special))
    assert ids == tokenizer.encode(text, add_special_tokens=special)


def test_the_loop_runs_while_a_huge_prompt_is_tokenized(tokenizer):
    """Ticks of a 5 ms ticker during one tokenization: with the GIL held by the tokenizer there would be none."""
    text = long_text(2**20)

    async def scenario() -> tuple[int, float]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        start_ticks, start = ticks, time.monotonic()
        await PromptTokenizer(tokenizer).encode(text)
        elapsed, during = time.monotonic() - start, ticks - start_ticks
        done.set()
        await task
        return during, elapsed

    during, elapsed = asyncio.run(scenario())
    assert elapsed > 0.1, f"the tokenization took only {elapsed:.3f} s: make the text longer"
    # a tick every 5 ms while the tokenizer runs; allow for a loaded machine
    assert during >= elapsed / 0.005 / 10, (during, elapsed)


def test_health_and_small_requests_are_served_while_a_huge_prompt_tokenizes(tiny_llama_dir, monkeypatch):
    started, release, ended = threading.Event(), threading.Event(), threading.Event()
    original = PromptTokenizer._encode_releasing_gil

    def held(self, text: str, add_special_tokens: bool) -> list[int]:
        started.set()
        release.wait(60)  # the tokenization lasts as long as the test wants
        try:
            return original(self, text, add_special_tokens)
        finally:
            ended.set()

    monkeypatch.setattr(PromptTokenizer, "_encode_releasing_gil", held)
    client = EngineProcessClient(tiny_engine_args(tiny_llama_dir))
    client.start()
    server = LiveServer(client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY,
                                                      max_request_bytes=2 * 2**20)})
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        result: dict[str, httpx.Response] = {}

        def huge() -> None:
            result["huge"] = httpx.post(server.url + "/v1/completions", headers=headers, timeout=120,
                                        json={"model": MODEL, "prompt": long_text(2**20), "max_tokens": 1})

        sender = threading.Thread(target=huge)
        sender.start()
        assert started.wait(60), "the huge prompt never reached the tokenizer"
        assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
        small = httpx.post(server.url + "/v1/completions", headers=headers, timeout=60,
                           json={"model": MODEL, "prompt": "hello", "max_tokens": 3, "temperature": 0})
        assert small.status_code == 200 and small.json()["usage"]["completion_tokens"] == 3
        assert not ended.is_set()
        release.set()
        sender.join(120)
        r = result["huge"]
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    finally:
        release.set()
        server.stop()
        client.shutdown()
