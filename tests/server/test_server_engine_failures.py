"""A failing request fails alone; a dead engine process makes /health fail and requests fail fast."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest
from faulty_engine import make_faulty_engine
from live_server import MODEL

PROMPT = "Hello world"


def test_request_failures_are_isolated_then_dead_engine_is_reported(start_server):
    server = start_server(make_engine=make_faulty_engine)
    client = server.openai(timeout=30)
    expected = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text

    # a healthy stream runs while two poisoned requests fail next to it
    healthy: list[str] = []

    def healthy_stream() -> None:
        chunks = server.openai(timeout=30).completions.create(model=MODEL, prompt=PROMPT, max_tokens=24,
                                                             temperature=0, stream=True,
                                                             extra_body={"ignore_eos": True})
        healthy.append("".join(c.choices[0].text for c in chunks))

    t = threading.Thread(target=healthy_stream)
    t.start()
    for seed in (666, 667):
        r = server.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 20, "seed": seed})
        assert r.status_code == 500, r.text
        assert r.json()["error"]["type"] == "internal_server_error"
        assert "injected fault" in r.json()["error"]["message"]
    with pytest.raises(openai.APIError, match="injected fault"):
        for _ in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=20, seed=666, stream=True):
            pass
    t.join(60)
    assert healthy == [expected]
    server.wait_idle()
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text == expected

    # now kill the engine process in the middle of a stream
    got_error = []

    def long_stream() -> None:
        try:
            for _ in server.openai(timeout=30).completions.create(
                    model=MODEL, prompt=PROMPT, max_tokens=480, stream=True, extra_body={"ignore_eos": True}):
                pass
        except openai.APIError as e:
            got_error.append(e)

    t = threading.Thread(target=long_stream)
    t.start()
    deadline = time.monotonic() + 10
    while server.client.num_in_flight == 0 or server.client.num_waiting:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed_at = time.monotonic()
    os.kill(server.client.pid, signal.SIGKILL)
    t.join(10)
    assert not t.is_alive() and got_error and "engine" in str(got_error[0])
    assert time.monotonic() - killed_at < 5  # failed fast, did not hang

    r = httpx.get(server.url + "/health", timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
    start = time.monotonic()
    r = server.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 5}, timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
    assert time.monotonic() - start < 2
    assert httpx.get(server.url + "/metrics", timeout=5).status_code == 200  # still scrapeable
