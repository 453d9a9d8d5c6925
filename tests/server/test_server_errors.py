"""Every error case answers an OpenAI-shaped body with the right status, and the server keeps serving."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
from live_server import API_KEY, MODEL

PROMPT = "Hello world"


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def assert_still_serves(server, name: str = "main") -> None:
    r = server.openai(name).completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
    assert r.usage.completion_tokens >= 1


@contextmanager
def engine_paused(server):
    """SIGSTOPs the engine process: requests queue up without progressing (deterministic timing)."""
    os.kill(server.client.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.client.pid, signal.SIGCONT)


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_malformed_json(server):
    for body in (b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"prompt": "x", "n": 1e999}'):
        r = server.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
        assert_error(r, 400)
    assert_still_serves(server)


@pytest.mark.parametrize("body,param", [
    ({"prompt": 5}, "prompt"),
    ({"prompt": PROMPT, "max_tokens": "10"}, "max_tokens"),
    ({"prompt": PROMPT, "temperature": "hot"}, "temperature"),
    ({"prompt": PROMPT, "n": True}, "n"),
    ({"prompt": PROMPT, "stop": 3}, "stop"),
    ({"prompt": PROMPT, "logit_bias": {"5": "high"}}, "logit_bias"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({}, "prompt"),
])
def test_wrong_types(server, body, param):
    assert_error(server.post("/v1/completions", json=body), 400, param=param)
    assert_still_serves(server)


@pytest.mark.parametrize("body,param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}, "logprobs"),
])
def test_chat_wrong_types(server, body, param):
    assert_error(server.post("/v1/chat/completions", json=body), 400, param=param)
    assert_still_serves(server)


@pytest.mark.parametrize("field,value", [
    ("temperature", -1.0), ("top_p", 1.5), ("top_p", 0.0), ("n", 0), ("max_tokens", 0), ("logprobs", 50),
    ("presence_penalty", 3.0), ("frequency_penalty", -2.5), ("top_k", -5), ("min_p", 2.0),
    ("repetition_penalty", 0.0), ("logit_bias", {"x": 1.0}), ("logit_bias", {"5": 1000.0}), ("stop", [""]),
    ("n", 129), ("seed", 2**64),
])
def test_out_of_range_values(server, field, value):
    err = assert_error(server.post("/v1/completions", json={"prompt": PROMPT, field: value}), 400, param=field)
    assert err["type"] == "invalid_request_error"
    assert_still_serves(server)


def test_chat_out_of_range_and_top_logprobs(server):
    messages = [{"role": "user", "content": "hi"}]
    assert_error(server.post("/v1/chat/completions", json={"messages": messages, "temperature": -0.5}), 400,
                 param="temperature")
    assert_error(server.post("/v1/chat/completions", json={"messages": messages, "top_logprobs": 3}), 400,
                 param="top_logprobs")
    assert_error(server.post("/v1/chat/completions", json={"messages": messages, "logprobs": True,
                                                           "top_logprobs": 21}), 400, param="top_logprobs")
    assert_still_serves(server)


def test_unknown_model_is_400_model_not_found(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.openai().completions.create(model="gpt-7", prompt=PROMPT, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    assert_error(server.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "x"}]}), 400, param="model", code="model_not_found")
    assert_still_serves(server)


def test_prompt_too_long_and_bad_prompts(server):
    long_ids = [5] * 600  # max_model_len is 512
    assert_error(server.post("/v1/completions", json={"prompt": long_ids}), 400, param="prompt",
                 code="context_length_exceeded")
    long_text = " ".join(["fox"] * 600)
    assert_error(server.post("/v1/completions", json={"prompt": long_text}), 400, param="prompt",
                 code="context_length_exceeded")
    assert_error(server.post("/v1/completions", json={"prompt": [5] * 500, "max_tokens": 100}), 400,
                 param="max_tokens", code="context_length_exceeded")
    assert_error(server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long_text}]}),
                 400, param="messages", code="context_length_exceeded")
    assert_error(server.post("/v1/completions", json={"prompt": ""}), 400, param="prompt")
    assert_error(server.post("/v1/completions", json={"prompt": []}), 400, param="prompt")
    assert_error(server.post("/v1/completions", json={"prompt": [1, 10**6]}), 400, param="prompt")
    assert_error(server.post("/v1/completions", json={"prompt": [-1]}), 400, param="prompt")
    assert_error(server.post("/detokenize", json={"tokens": [10**6]}), 400, param="tokens")
    assert_still_serves(server)


def test_unsupported_fields(server):
    assert_error(server.post("/v1/completions", json={"prompt": PROMPT, "suffix": "x"}), 400, param="suffix")
    assert_error(server.post("/v1/completions", json={"prompt": PROMPT, "best_of": 3}), 400, param="best_of")
    assert_still_serves(server)


def test_api_key(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        r = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT}, headers=headers)
        assert_error(r, 401, code="invalid_api_key")
        assert_error(httpx.get(server.url + "/v1/models", headers=headers), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    # health and metrics stay open to probes and scrapers
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert_still_serves(server)


def test_unknown_route_and_method(server):
    assert_error(httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"}), 404)
    assert_error(httpx.get(server.url + "/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}), 405)
    assert_still_serves(server)


def test_overload_returns_503_with_retry_after(server):
    """The 'strict' port allows 2 waiting requests; with the engine paused a third is refused."""
    client = server.client
    results: list[str] = []

    def stream() -> None:
        with server.openai("strict", timeout=60) as c:
            results.append("".join(ch.choices[0].text for ch in c.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, stream=True)))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    with engine_paused(server):
        for t in threads:
            t.start()
        wait_for(lambda: client.num_waiting == 2)
        r = server.post("/v1/completions", name="strict", json={"prompt": PROMPT, "max_tokens": 2})
        err = assert_error(r, 503, code="server_overloaded")
        assert err["type"] == "service_unavailable_error"
        assert r.headers["Retry-After"] == "1"
        with pytest.raises(openai.APIStatusError) as e:
            server.openai("strict").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 503
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results[0] == results[1]  # the accepted ones were served
    assert_still_serves(server, "strict")


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    before = server.metric("pagoda:generation_tokens_total")
    body = {"prompt": PROMPT, "max_tokens": 480, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status_code == 200
        chunks = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks += 1
                if chunks == 3:
                    break
        os.kill(server.client.pid, signal.SIGSTOP)  # freeze it mid-generation (the tiny model is fast)
    try:  # leaving the block closed the connection mid-stream
        assert server.client.latest_stats.kv_cache_usage > 0  # it held blocks while running
        wait_for(lambda: server.client.num_in_flight == 0)  # the server noticed and sent the abort
    finally:
        os.kill(server.client.pid, signal.SIGCONT)
    server.wait_idle()
    generated = server.metric("pagoda:generation_tokens_total") - before
    assert 3 <= generated < 480  # aborted long before the end
    assert_still_serves(server)


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_disconnect_before_any_output_aborts(server, endpoint):
    """Non-streaming: the client gives up while the request waits; the engine never runs it."""
    body = {"max_tokens": 400, "ignore_eos": True}
    body.update({"prompt": PROMPT} if "chat" not in endpoint else {"messages": [{"role": "user", "content": "x"}]})
    before = server.metric("pagoda:generation_tokens_total")
    with engine_paused(server):
        with pytest.raises(httpx.ReadTimeout):
            server.post(endpoint, json=body, timeout=httpx.Timeout(60, read=0.5))
        wait_for(lambda: server.client.num_in_flight == 0)  # the server noticed and aborted
    server.wait_idle()
    assert server.metric("pagoda:generation_tokens_total") == before
    assert_still_serves(server)
