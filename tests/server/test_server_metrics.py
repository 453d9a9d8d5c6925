"""/metrics: Prometheus text under the pagoda: prefix, moving with the traffic."""

from __future__ import annotations

import os
import signal

import httpx
from live_server import MODEL, LiveServer

from pagoda.server.config import ServerConfig

PROMPT = "Metrics are counted here"

EXPECTED = [
    "pagoda:time_to_first_token_seconds_bucket", "pagoda:time_to_first_token_seconds_count",
    "pagoda:inter_token_latency_seconds_count", "pagoda:e2e_request_latency_seconds_count",
    "pagoda:request_queue_time_seconds_count", "pagoda:num_requests_running", "pagoda:num_requests_waiting",
    "pagoda:kv_cache_usage_perc", "pagoda:prefix_cache_hit_rate", "pagoda:prefix_cache_queries_total",
    "pagoda:prefix_cache_hits_total", "pagoda:prompt_tokens_total", "pagoda:generation_tokens_total",
    "pagoda:num_preemptions_total", "pagoda:request_success_total",
]


def test_metrics_exposition_and_counts(server):
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in EXPECTED:
        assert f"\n{name}" in r.text, name
    assert f'model_name="{MODEL}"' in r.text

    before = server.metrics()
    client = server.openai()
    usage = [client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True}).usage for _ in range(2)]
    for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=6, stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}):
        if chunk.usage:
            usage.append(chunk.usage)
    after = server.wait_idle()

    def delta(name: str) -> float:
        return sum(v for k, v in after.items() if k.split("{")[0] == name) - \
            sum(v for k, v in before.items() if k.split("{")[0] == name)

    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta(f"pagoda:{hist}_count") == 3, hist
        assert delta(f"pagoda:{hist}_sum") > 0
    assert delta("pagoda:inter_token_latency_seconds_count") == 3 * 5  # every token after each request's first
    assert delta("pagoda:generation_tokens_total") == sum(u.completion_tokens for u in usage) == 18
    # prompt tokens are either computed or found in the prefix cache
    assert delta("pagoda:prompt_tokens_total") + delta("pagoda:prefix_cache_hits_total") == \
        sum(u.prompt_tokens for u in usage)
    assert after[f'pagoda:request_success_total{{finished_reason="length",model_name="{MODEL}"}}'] - before.get(
        f'pagoda:request_success_total{{finished_reason="length",model_name="{MODEL}"}}', 0) == 3
    assert delta("pagoda:engine_steps_total") >= 6


def test_gauges_follow_running_requests(server):
    """With the engine paused mid-request the gauges show it running and holding blocks.

    The engine may run ahead of the stream (a tiny model fills the socket faster than we read it), so
    the scrape is retried at each chunk, the engine paused, until one sees the request running."""
    body = {"prompt": PROMPT, "max_tokens": 300, "ignore_eos": True, "stream": True}
    running = f'pagoda:num_requests_running{{model_name="{MODEL}"}}'
    usage = f'pagoda:kv_cache_usage_perc{{model_name="{MODEL}"}}'
    seen: list[tuple[float, float]] = []
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer test-key"}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            os.kill(server.client.pid, signal.SIGSTOP)  # a scrape then serves the last stats it got
            try:
                m = server.metrics()
            finally:
                os.kill(server.client.pid, signal.SIGCONT)
            seen.append((m[running], m[usage]))
            if m[running] == 1:
                break
    assert seen and seen[-1][0] == 1, seen
    assert seen[-1][1] > 0


def test_images_router_is_mounted_when_configured(live_server, tmp_path):
    """The image router (pagoda.server.images) sits behind the same API key; its model loads lazily,
    so a request it refuses before generating shows the route without building a diffusion model."""
    server = LiveServer(live_server.client, {"main": ServerConfig(served_model_name=MODEL, api_key="test-key",
                                                                  image_model=str(tmp_path / "unused"))})
    try:
        r = server.post("/v1/images/generations", json={"prompt": "a fox", "sampler": "Nope"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "sampler"
        assert httpx.post(server.url + "/v1/images/generations", json={"prompt": "x"}).status_code == 401
        assert server.openai().models.list().data[0].id == MODEL
    finally:
        server.stop()


def test_prefix_cache_metrics(server):
    """The same long system prompt twice: the second request's prefix comes from the cache."""
    system = "You answer questions about foxes. " * 20
    client = server.openai()
    before = server.metrics()
    for question in ("Where do foxes live?", "What do foxes eat?"):
        client.chat.completions.create(model=MODEL, max_tokens=2, messages=[
            {"role": "system", "content": system}, {"role": "user", "content": question}])
    after = server.wait_idle()
    key = f'{{model_name="{MODEL}"}}'
    hits = after[f"pagoda:prefix_cache_hits_total{key}"] - before[f"pagoda:prefix_cache_hits_total{key}"]
    queries = after[f"pagoda:prefix_cache_queries_total{key}"] - before[f"pagoda:prefix_cache_queries_total{key}"]
    assert hits >= 16 * 5 and queries > hits  # the system prompt spans several 16-token blocks
    assert 0 < after[f"pagoda:prefix_cache_hit_rate{key}"] <= 1
    # another tenant's salt: the same prompt finds nothing of the first tenant's
    before = after
    client.chat.completions.create(model=MODEL, max_tokens=2, extra_body={"cache_salt": "tenant-b"}, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "Where do foxes live?"}])
    after = server.wait_idle()
    assert after[f"pagoda:prefix_cache_hits_total{key}"] == before[f"pagoda:prefix_cache_hits_total{key}"]
