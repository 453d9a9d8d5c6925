"""Guards against clients that send too much, too slowly, or too many requests at once.

uvicorn reads request bodies with no size or time limit and waits forever for headers, so a few
slow or huge clients (slowloris, 10 MB bodies) could hold connections, memory and handlers. Two
pieces, both configured from ``ServerConfig``:

- ``SlowClientGuard``, an ASGI middleware: reads each request body itself, stopping with a 413 past
  ``max_request_bytes`` (before anything parses it) and a 408 when the whole body has not arrived
  within ``body_read_timeout_s``; caps the requests served at once (streams included) with a fast 503
  + Retry-After. The app then reads the buffered body, and later ``receive()`` calls (disconnect
  watching) go to the client as before.
- ``HeaderTimeoutH11Protocol``, uvicorn's h11 protocol with a deadline for the request line and
  headers: a connection that has not sent them within ``header_read_timeout_s`` of opening (or of
  its previous response) is closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pagoda.server.config import ServerConfig

Scope = dict[str, Any]
Message = dict[str, Any]

_GUARDED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")  # the API; /health and /metrics stay cheap and open
_GENERATING = ("/v1/completions", "/v1/chat/completions", "/v1/responses")  # these queue engine work
_DRAIN_FACTOR = 4  # a declared body up to this many times the limit is read (and dropped) before the 413


class SlowClientGuard:
    def __init__(self, app: Any, config: ServerConfig, queue_full: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.queue_full = queue_full  # the engine's waiting queue is at --max-waiting: 503 before reading anything
        self.max_bytes = config.max_request_bytes
        self.timeout_s = config.body_read_timeout_s
        self.max_active = config.max_concurrent_requests
        self.retry_after_s = config.retry_after_s
        self.active = 0  # API requests between their first byte and the end of their response

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_GUARDED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_active:
            await _error(send, 503, f"server busy: {self.active} requests in progress (limit {self.max_active}); "
                                    "retry later", "server_overloaded", {"retry-after": str(self.retry_after_s)})
            return
        if scope["method"] == "POST" and scope["path"] in _GENERATING and self.queue_full():
            await _error(send, 503, "server overloaded: the waiting queue is full (--max-waiting); retry later",
                         "server_overloaded", {"retry-after": str(self.retry_after_s)})
            return
        self.active += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.active -= 1

    async def _guarded(self, scope: Scope, receive: Any, send: Any) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= _DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive)  # so the client reads the 413 instead of a reset connection
            await _too_large(send, self.max_bytes)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await _error(send, 408, f"the request body was not received within {self.timeout_s:g} s",
                             "request_timeout", {"connection": "close"})
                return
            if message["type"] == "http.disconnect":
                return  # gone before sending its request: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


    async def _drain(self, receive: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        more = True
        while more and loop.time() < deadline:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return
            more = message["type"] == "http.request" and message.get("more_body", False)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Any, limit: int) -> None:
    # the unread rest of the body makes the connection unusable: close it after answering
    await _error(send, 413, f"the request body is larger than {limit} bytes (--max-request-bytes)",
                 "request_too_large", {"connection": "close"})


async def _error(send: Any, status: int, message: str, code: str, headers: dict[str, str]) -> None:
    kind = "service_unavailable_error" if status == 503 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}},
                      separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers do not arrive in time."""

    header_timeout_s: float = ServerConfig.header_read_timeout_s
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request on this kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this header deadline."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": timeout_s})
