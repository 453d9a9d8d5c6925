"""Fixtures: one engine shared by the session, exposed on two ports: ``main`` (API key
``test-key``, generous limits) and ``strict`` (``max_waiting=2``), so overload tests need no
second engine; and private servers for tests that break their engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args

from pagoda.server.config import ServerConfig
from pagoda.server.engine_process_client import EngineProcessClient


@pytest.fixture(scope="session")
def live_server(tiny_llama_dir: str) -> Iterator[LiveServer]:
    client = EngineProcessClient(tiny_engine_args(tiny_llama_dir))
    client.start()
    server = LiveServer(client, {
        "main": ServerConfig(served_model_name=MODEL, api_key=API_KEY, max_waiting=1000),
        "strict": ServerConfig(served_model_name=MODEL, api_key=API_KEY, max_waiting=2),
    })
    yield server
    server.stop()
    client.shutdown()


@pytest.fixture()
def server(live_server: LiveServer) -> Iterator[LiveServer]:
    """The shared server; every test must leave it idle with all KV blocks free."""
    yield live_server
    live_server.wait_idle()


@pytest.fixture()
def start_server(tiny_llama_dir: str) -> Iterator[Callable[..., LiveServer]]:
    """Starts a private server (its own engine process), for tests that break the engine."""
    started: list[LiveServer] = []

    def start(make_engine: Callable | None = None, **config: Any) -> LiveServer:
        kwargs = {"make_engine": make_engine} if make_engine is not None else {}
        client = EngineProcessClient(tiny_engine_args(tiny_llama_dir), **kwargs)
        client.start()
        s = LiveServer(client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY, **config)})
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
        s.client.shutdown()
