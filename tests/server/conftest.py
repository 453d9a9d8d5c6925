"""Fixtures: one engine shared by the session, exposed on two ports: ``main`` (API key
``test-key``, generous limits) and ``strict`` (``max_waiting=2``), so overload tests need no
second engine; and private servers for tests that break their engine.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args
from tool_templates import TOOLS_TEMPLATE

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


@pytest.fixture(scope="session")
def tools_model_dir(tiny_model_factory) -> str:
    return tiny_model_factory(max_positions=4096)


@pytest.fixture(scope="session")
def tools_server(tools_model_dir: str) -> Iterator[LiveServer]:
    """Apps over one engine (a tiny model with room for tool prompts): each tool parser, a template with
    native tools, reasoning, mean pooling."""
    client = EngineProcessClient(tiny_engine_args(tools_model_dir, num_kv_blocks=512))
    client.start()
    chatml = client.info.tokenizer
    native = copy.copy(chatml)
    native.chat_template = TOOLS_TEMPLATE
    configs = {
        "main": ServerConfig(served_model_name=MODEL, api_key=API_KEY),  # hermes: the default
        "mistral": ServerConfig(served_model_name=MODEL, api_key=API_KEY, tool_call_parser="mistral"),
        "llama3_json": ServerConfig(served_model_name=MODEL, api_key=API_KEY, tool_call_parser="llama3_json"),
        "native": ServerConfig(served_model_name=MODEL, api_key=API_KEY),
        "think": ServerConfig(served_model_name=MODEL, api_key=API_KEY, reasoning_parser="think"),
        "mean": ServerConfig(served_model_name=MODEL, api_key=API_KEY, pooling="mean"),
    }
    server = LiveServer(client, configs, tokenizers={"native": native})
    yield server
    server.wait_idle()
    server.stop()
    client.shutdown()
