"""A real server on loopback for the server tests: the engine process runs the tiny random
Llama, uvicorn serves the app from a thread of the test process, and tests talk to it over
sockets with the real `openai` client and httpx.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from typing import Any

import httpx
import openai
import uvicorn

from pagoda.engine.args import EngineArgs
from pagoda.server.app import build_app
from pagoda.server.config import ServerConfig
from pagoda.server.engine_client import EngineClient

API_KEY = "test-key"
MODEL = "tiny"


class LiveServer:
    """Several apps over one EngineClient, served by uvicorn on one event loop in a thread."""

    def __init__(self, client: EngineClient, configs: dict[str, ServerConfig],
                 tokenizers: dict[str, Any] | None = None, uvicorn_options: dict[str, Any] | None = None) -> None:
        self.client = client
        self.configs = configs
        self.urls: dict[str, str] = {}
        self._servers: list[uvicorn.Server] = []
        sockets = {}
        for name, config in configs.items():
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets[name] = sock
            self.urls[name] = f"http://127.0.0.1:{sock.getsockname()[1]}"
            app = build_app(client, config, (tokenizers or {}).get(name))
            self._servers.append(uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                            **(uvicorn_options or {}))))
        self.loop = asyncio.new_event_loop()

        async def serve_all() -> None:
            await asyncio.gather(*(s.serve(sockets=[sockets[name]]) for s, name in zip(self._servers, configs)))

        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(serve_all(),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not all(s.started for s in self._servers):
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return self.urls["main"]

    def openai(self, name: str = "main", **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.urls[name] + "/v1", api_key=API_KEY, max_retries=0, **kw)

    def async_openai(self, name: str = "main", **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.urls[name] + "/v1", api_key=API_KEY, max_retries=0, **kw)

    def post(self, path: str, name: str = "main", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {API_KEY}", **kw.pop("headers", {})}
        kw.setdefault("timeout", 60)
        return httpx.post(self.urls[name] + path, headers=headers, **kw)

    def metrics(self) -> dict[str, float]:
        """The /metrics samples as {"name{labels}": value}."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str) -> float:
        """Sum of all samples of ``name`` (any labels)."""
        pattern = re.compile(re.escape(name) + r"(\{.*\})?$")
        return sum(v for k, v in self.metrics().items() if pattern.match(k))

    def wait_idle(self, timeout_s: float = 20.0) -> dict[str, float]:
        """Waits until no request runs or waits and every KV block is free; returns the metrics."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            busy = {k: v for k, v in m.items() if k.startswith(("pagoda:num_requests_running",
                                                                 "pagoda:num_requests_waiting",
                                                                 "pagoda:kv_cache_usage_perc")) and v != 0}
            if not busy and self.client.num_in_flight == 0:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"engine not idle after {timeout_s} s: {busy}, "
                                     f"{self.client.num_in_flight} in flight")
            time.sleep(0.05)

    def stop(self) -> None:
        for s in self._servers:
            s.should_exit = True
        self._thread.join(30)


def tiny_engine_args(model_dir: str, **kw: Any) -> EngineArgs:
    options: dict[str, Any] = dict(model=model_dir, dtype="float32", num_kv_blocks=256, max_num_seqs=64,
                                   show_progress=False)
    options.update(kw)
    return EngineArgs(**options)
