"""The live dashboard at ``/dashboard`` in headless Chromium, against the real server (tiny model)."""

from __future__ import annotations

import threading
import time

import httpx
from live_server import API_KEY, MODEL
from playwright.sync_api import TimeoutError as PlaywrightTimeout

_BLOCKS = ".blockmap-wrap"
_TIMELINE = ".timeline-wrap"


def _attr(page, selector: str, name: str) -> int:
    return int(page.get_attribute(selector, f"data-{name}"))


class _Load(threading.Thread):
    errors: list[BaseException]


def _load(server, n: int, max_tokens: int, prompt_words: int = 40) -> _Load:
    """n concurrent streaming requests (each its own prompt, so each owns its blocks), in a thread;
    ``errors`` collects what failed."""
    def run() -> None:
        import asyncio

        async def one(i: int) -> None:
            client = server.async_openai()
            stream = await client.completions.create(
                model=MODEL, prompt=f"request {i}: " + " ".join(f"w{i}x{j}" for j in range(prompt_words)),
                max_tokens=max_tokens, temperature=1.0, seed=i, stream=True, extra_body={"ignore_eos": True})
            async for _ in stream:
                pass

        async def main() -> None:
            await asyncio.gather(*(one(i) for i in range(n)))

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            t.errors.append(e)

    t = _Load(target=run, daemon=True)
    t.errors = []
    t.start()
    return t


def _first_frame(url: str, headers: dict[str, str] | None = None) -> dict:
    import json

    with httpx.stream("GET", url + "/dashboard/stream", headers=headers or {}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:])
    raise AssertionError("no event")


def test_block_map_follows_the_requests_and_the_timeline_advances(server, page, screenshot) -> None:
    page.goto(server.url + "/dashboard")
    page.wait_for_function("Number(document.body.dataset.frames) > 0", timeout=30_000)
    total = _attr(page, _BLOCKS, "total")
    assert total == server.client.latest_stats.num_kv_blocks == 256
    assert _attr(page, _BLOCKS, "owned") == 0
    last_step = _attr(page, _TIMELINE, "last-step")

    load = _load(server, n=6, max_tokens=200)
    # while the requests run, their blocks show as owned and the queue lists them
    page.wait_for_function(f"Number(document.querySelector('{_BLOCKS}').dataset.owned) >= 6", timeout=60_000)
    assert load.is_alive()
    page.wait_for_function("document.querySelectorAll('#queue tbody tr[data-status=running]').length >= 4",
                           timeout=60_000)
    time.sleep(1.0)  # a few timeline steps into the decode
    if load.is_alive():
        screenshot(page, "dashboard")
    load.join(600)  # generous: a loaded machine
    assert not load.is_alive() and not load.errors

    # afterwards every block is free or cached (prefix caching keeps the prompts' full blocks)
    server.wait_idle()
    page.wait_for_function(f"Number(document.querySelector('{_BLOCKS}').dataset.owned) == 0", timeout=30_000)
    free, cached = _attr(page, _BLOCKS, "free"), _attr(page, _BLOCKS, "cached")
    assert free + cached == total and cached > 0
    # the page shows what the stream says
    frame = _first_frame(server.url)
    state = frame["replicas"][0]["blocks"]["state"]
    assert (state.count("."), state.count("c"), state.count("o") + state.count("h")) == (free, cached, 0)

    # the timeline advanced by the steps the engine ran, with prefill and decode tokens in them
    assert _attr(page, _TIMELINE, "last-step") >= last_step + 199  # one decode token per request per step
    steps = page.evaluate("views[0].steps")
    assert sum(s[3] for s in steps) >= 0 and sum(s[4] for s in steps) > 0
    assert all(s[1] > 0 and s[2] >= 1 for s in steps)
    assert "tok/s" in page.text_content("#gen-tps-minute")
    assert page.text_content("#ttft-p50") != "–" and page.text_content("#itl-p50") != "–"
    assert all(u.startswith(server.url + "/") for u in page.urls_requested)  # nothing from a CDN


def test_prefix_hits_are_shown(server, page) -> None:
    page.goto(server.url + "/dashboard")
    page.wait_for_function("Number(document.body.dataset.frames) > 0", timeout=30_000)
    before = _attr(page, _BLOCKS, "hits")
    # the same long prompt twice: the second request reuses the first one's cached blocks
    prompt = "shared " + " ".join(f"s{j}" for j in range(60))
    client = server.openai()
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    page.wait_for_function(f"Number(document.querySelector('{_BLOCKS}').dataset.cached) > 0", timeout=30_000)
    # the page counts a hit when one frame shows a cached block that the next shows in use; a request's blocks
    # are in use only while it runs, which a frame can miss on a busy host: so ask again, a bounded number of times
    for attempt in range(10):
        client.completions.create(model=MODEL, prompt=prompt + f" again {attempt}", max_tokens=200,
                                  extra_body={"ignore_eos": True})
        if _attr(page, _BLOCKS, "hits") > before:
            break
        try:
            page.wait_for_function(f"Number(document.querySelector('{_BLOCKS}').dataset.hits) > {before}",
                                   timeout=3_000)
            break
        except PlaywrightTimeout:
            continue
    assert _attr(page, _BLOCKS, "hits") > before, "the page never showed a prefix hit"
    assert page.text_content("#hit-rate") not in ("–", "0.0%")


def test_stream_needs_the_key_and_the_page_asks_for_it(server, page, screenshot) -> None:
    url = server.urls["keyed"]
    assert httpx.get(url + "/dashboard/stream", timeout=10).status_code == 401
    wrong = httpx.get(url + "/dashboard/stream", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    frame = _first_frame(url, {"Authorization": f"Bearer {API_KEY}"})
    assert frame["model"] == MODEL and frame["replicas"][0]["blocks"]["num_blocks"] == 256

    page.goto(url + "/dashboard")
    page.wait_for_selector("#key-dialog[open]")
    assert page.evaluate("document.body.dataset.frames") is None
    page.fill("#key-input", "nope")
    page.click("#key-submit")
    page.wait_for_function("document.getElementById('key-message').textContent.includes('refused')")
    page.fill("#key-input", API_KEY)
    page.click("#key-submit")
    page.wait_for_function("Number(document.body.dataset.frames) > 0", timeout=30_000)
    assert page.text_content("#connection") == "live"


def test_updates_are_bounded_and_coalesced(server) -> None:
    """At most 10 frames a second, whatever the engine does (fewer when its steps are slow: a snapshot is
    taken between steps)."""
    load = _load(server, n=4, max_tokens=300)
    events, started = 0, time.monotonic()
    with httpx.stream("GET", server.url + "/dashboard/stream", timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events += 1
            if time.monotonic() - started > 3.0 and events >= 2:
                break
    elapsed = time.monotonic() - started
    load.join(600)
    assert not load.errors
    assert events <= 10 * elapsed + 1, (events, elapsed)


def test_no_web_ui_turns_both_pages_off(server) -> None:
    url = server.urls["off"]
    for path in ("/", "/dashboard", "/dashboard/stream", "/ui/config.json", "/ui/dashboard.js"):
        assert httpx.get(url + path, timeout=10).status_code == 404, path
    assert server.openai("off").models.list().data[0].id == MODEL  # the API is still there
