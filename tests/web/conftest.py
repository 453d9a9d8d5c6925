"""Fixtures of the web UI tests: one tiny engine behind three apps (open, with an API key, and with
``web_ui=False``) and one headless Chromium (Debian's ``chromium``, driven by Playwright; never a
browser download). Screenshots go to a pytest temporary folder, and also to ``$PAGODA_SCREENSHOTS``
when set (``PAGODA_SCREENSHOTS=docs/images`` refreshes the README's pictures)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "server"))
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args  # noqa: E402

from pagoda.server.config import ServerConfig  # noqa: E402
from pagoda.server.engine_process_client import EngineProcessClient  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def web_server(tiny_llama_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from pagoda.diffusion.tiny import build_tiny_text_to_image

    image_model = build_tiny_text_to_image(str(tmp_path_factory.mktemp("tiny-sd-web")), seed=5)
    client = EngineProcessClient(tiny_engine_args(tiny_llama_dir))
    client.start()
    server = LiveServer(client, {
        "main": ServerConfig(served_model_name=MODEL),
        "keyed": ServerConfig(served_model_name=MODEL, api_key=API_KEY),
        "off": ServerConfig(served_model_name=MODEL, web_ui=False),
        "images": ServerConfig(served_model_name=MODEL, image_model=image_model),
    })
    yield server
    server.stop()
    client.shutdown()


@pytest.fixture()
def server(web_server: LiveServer) -> Iterator[LiveServer]:
    """The shared server; every test leaves it idle with all KV blocks free or cached."""
    yield web_server
    web_server.wait_idle()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "install Debian's chromium first: scripts/setup.sh does"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.urls_requested = []  # what the page fetched: everything must come from the server itself
    pg.on("request", lambda r: pg.urls_requested.append(r.url))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("PAGODA_SCREENSHOTS")

    def take(pg: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        pg.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000, "an empty screenshot"
        if extra:
            os.makedirs(extra, exist_ok=True)
            shutil.copy(path, os.path.join(extra, path.name))
        return path

    return take
