"""The browser pages of ``pagoda serve``: a chat page at ``/`` and a live dashboard at ``/dashboard``.

Both are static files shipped in the package (``pagoda/server/static``; no CDN, they work offline).
The dashboard reads one server-sent-events stream, ``GET /dashboard/stream``, which the page opens
with ``fetch`` (not ``EventSource``) so that it can send ``Authorization: Bearer <key>`` when the
server has ``--api-key``: the stream, like the API, refuses requests without the key; the pages
themselves hold no data and ask the user for the key.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from pagoda.server.config import ServerConfig
from pagoda.server.dashboard_hub import DashboardHub
from pagoda.server.errors import APIError

_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


def _load_assets() -> dict[str, bytes]:
    """Every file of the static folder, by name (read once: the set is small and fixed)."""
    folder = resources.files("pagoda.server") / "static"
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")}


def _media_type(name: str) -> str:
    return next((t for ext, t in _MEDIA_TYPES.items() if name.endswith(ext)), "application/octet-stream")


def make_router(client: Any, config: ServerConfig, model_name: str) -> APIRouter:
    """Routes of both pages, their assets, the page configuration and the dashboard's stream."""
    assets = _load_assets()
    hub = DashboardHub(client, model_name)

    async def require_key(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        if not secrets.compare_digest(token.encode(), config.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    router = APIRouter()

    def page(name: str) -> HTMLResponse:
        return HTMLResponse(assets[name], headers={"Cache-Control": "no-cache"})

    @router.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return page("index.html")

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return page("dashboard.html")

    @router.get("/ui/config.json", include_in_schema=False)
    async def ui_config() -> JSONResponse:
        """What the pages must know before the user gives a key (nothing about the model itself)."""
        samplers: list[str] = []
        if config.image_model is not None:
            from pagoda.diffusion.presets import PRESETS

            samplers = list(PRESETS)
        return JSONResponse({"auth_required": config.api_key is not None,
                             "image_model": config.image_model is not None, "samplers": samplers,
                             "max_updates_per_s": 1.0 / hub.interval_s})

    @router.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        data = assets.get(name)
        if data is None:
            raise APIError(404, f"no such file: {name}", code="not_found")
        return Response(data, media_type=_media_type(name), headers={"Cache-Control": "no-cache"})

    @router.get("/dashboard/stream", dependencies=[Depends(require_key)], include_in_schema=False)
    async def dashboard_stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            async for frame in hub.frames():
                yield f"data: {frame}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router
