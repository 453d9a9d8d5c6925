"""Every bound of the server: one request past it gets its documented status and OpenAI-style error,
and the next request succeeds. A server with small limits shares the session's engine."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import API_KEY, MODEL, LiveServer

from pagoda.server.config import ServerConfig
from pagoda.server.slow_client_guard import header_timeout_protocol

LIMITS = ServerConfig(served_model_name=MODEL, api_key=API_KEY, max_request_bytes=4096, body_read_timeout_s=0.5,
                      max_concurrent_requests=2, max_n=4, max_logprobs=3, max_stop_strings=2, max_stop_chars=8,
                      max_spec_chars=1000, max_schema_depth=5, grammar_compile_timeout_s=5.0, retry_after_s=2)


@pytest.fixture(scope="module")
def limited(live_server: LiveServer) -> Iterator[LiveServer]:
    server = LiveServer(live_server.client, {"main": LIMITS},
                        uvicorn_options={"http": header_timeout_protocol(0.5)})
    yield server
    server.stop()
    live_server.wait_idle()


def completion(server: LiveServer, **fields: Any) -> httpx.Response:
    return server.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 3,
                                                "temperature": 0, **fields})


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def assert_next_succeeds(server: LiveServer) -> None:
    r = completion(server)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


def test_body_past_the_limit_is_413_by_its_declared_length(limited):
    r = completion(limited, prompt="x" * 5000)
    assert_error(r, 413, code="request_too_large")
    assert_next_succeeds(limited)


def test_chunked_body_past_the_limit_is_413_while_it_is_read(limited):
    sent = []

    def body() -> Iterator[bytes]:  # no Content-Length: the guard counts what arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(1000):
            sent.append(1)
            yield b"x" * 1024
        yield b'"}'

    try:
        r = httpx.post(limited.url + "/v1/completions", content=body(), timeout=30,
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    except httpx.HTTPError:  # the server may close before the client has finished writing
        r = None
    if r is not None:
        assert_error(r, 413, code="request_too_large")
    assert len(sent) < 1000  # it stopped reading long before the 1 MB end
    assert_next_succeeds(limited)


def raw_request(server: LiveServer, head: bytes, body: bytes) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head + body)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_body_gets_408_and_its_connection_is_closed(limited):
    payload = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    start = time.monotonic()
    sock = raw_request(limited, head, payload[:5])  # and then nothing: a slowloris body
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in reply
    assert time.monotonic() - start < 5
    assert_next_succeeds(limited)


def test_connection_without_complete_headers_is_closed(limited):
    start = time.monotonic()
    sock = raw_request(limited, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", b"")  # headers never end
    assert read_all(sock) == b""  # closed without an answer
    sock.close()
    assert time.monotonic() - start < 5
    assert_next_succeeds(limited)


@pytest.mark.parametrize("fields, param", [
    ({"n": 5}, "n"),
    ({"logprobs": 4}, "logprobs"),
    ({"stop": ["a", "b", "c"]}, "stop"),
    ({"stop": "x" * 9}, "stop"),
])
def test_sampling_bounds(limited, fields, param):
    assert_error(completion(limited, **fields), 400, param=param)
    assert_next_succeeds(limited)


def test_chat_top_logprobs_bound(limited):
    r = limited.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                    "logprobs": True, "top_logprobs": 4, "max_tokens": 2})
    assert_error(r, 400, param="top_logprobs")
    assert_next_succeeds(limited)


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_schema_nesting_bound(limited):
    r = completion(limited, response_format={"type": "json_schema", "json_schema": {"name": "n",
                                                                                    "schema": nested_schema(6)}})
    assert_error(r, 400, param="response_format", code="schema_too_deep")
    r = completion(limited, guided_json=nested_schema(1), max_tokens=20)  # within the bound: served
    assert r.status_code == 200, r.text
    assert_next_succeeds(limited)


def test_spec_size_bound(limited):
    r = completion(limited, guided_choice=[f"choice{i}" for i in range(200)])
    assert_error(r, 400, param="guided_choice", code="spec_too_large")
    assert_next_succeeds(limited)


def test_compile_timeout_names_the_field(live_server):
    strict = LiveServer(live_server.client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY,
                                                                   grammar_compile_timeout_s=0.001)})
    try:
        grammar = "start: " + " | ".join(f'"t{i}x"' for i in range(2500))  # not compiled before: ~0.1 s
        error = assert_error(completion(strict, guided_grammar=grammar), 400, param="guided_grammar")
        assert "--grammar-compile-timeout" in error["message"]
        assert_next_succeeds(strict)
    finally:
        strict.stop()


def test_chat_tool_grammar_compiles_within_the_timeout(live_server):
    """A tools grammar compiles on a worker thread under --grammar-compile-timeout too (it used to
    compile on the event loop, with no time limit)."""
    strict = LiveServer(live_server.client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY,
                                                                   grammar_compile_timeout_s=0.001)})
    try:
        # never compiled before (a fresh name), and large enough to take well over a millisecond
        properties = {f"p{i}": {"type": "string", "enum": [f"v{i}_{j}" for j in range(40)]} for i in range(40)}
        tool = {"type": "function", "function": {"name": f"pick_{time.monotonic_ns()}", "parameters": {
            "type": "object", "properties": properties, "required": list(properties)}}}
        r = strict.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 3, "tools": [tool],
                                                      "tool_choice": "required",
                                                      "messages": [{"role": "user", "content": "hi"}]})
        error = assert_error(r, 400, param="tools")
        assert "--grammar-compile-timeout" in error["message"]
        assert_next_succeeds(strict)
    finally:
        strict.stop()


def test_concurrent_requests_past_the_limit_get_a_fast_503(limited):
    client = limited.openai()
    streams = [client.completions.create(model=MODEL, prompt="hi", max_tokens=200, stream=True, extra_body={
        "ignore_eos": True}) for _ in range(2)]
    try:
        for s in streams:
            next(iter(s))  # both are being served
        start = time.monotonic()
        r = completion(limited)
        elapsed = time.monotonic() - start
        assert_error(r, 503, code="server_overloaded")
        assert r.headers["retry-after"] == "2"
        assert elapsed < 1.0
    finally:
        for s in streams:
            s.close()
    deadline = time.monotonic() + 10
    while completion(limited).status_code == 503:  # the closed streams end within a step or two
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert_next_succeeds(limited)


def test_a_3000_way_grammar_is_served(server):
    words = [f"w{i}" for i in range(3000)]
    r = server.post("/v1/completions", json={"model": MODEL, "prompt": "pick", "max_tokens": 10, "temperature": 0,
                                             "guided_grammar": "start: " + " | ".join(f'"{w}"' for w in words)})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] in words


def test_streams_cut_at_random_points_free_every_block(server):
    import random

    rng = random.Random(0)

    def cut(i: int) -> None:
        with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": MODEL, "prompt": f"story {i}", "max_tokens": 100, "stream": True,
                                "ignore_eos": True, **({"guided_regex": "[a-z ]+"} if i % 3 == 0 else {})}) as r:
            for j, _ in enumerate(r.iter_lines()):
                if j >= rng.randrange(0, 20):
                    break

    threads = [threading.Thread(target=cut, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = server.wait_idle()  # every request gone and every KV block free
    assert m["pagoda:kv_cache_usage_perc{model_name=\"tiny\"}"] == 0
