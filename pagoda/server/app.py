"""The FastAPI application: routes, API-key check and error handlers over a running EngineClient."""

from __future__ import annotations

import logging
import secrets

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pagoda.server.config import ServerConfig
from pagoda.server.engine_client import EngineClient
from pagoda.server.errors import APIError, install_error_handlers
from pagoda.server.idle_memory_release import IdleMemoryRelease
from pagoda.server.lora_models import LoRAModels
from pagoda.server.metrics import ServerMetrics
from pagoda.server.openai_serving import ModelInfo, parse_body
from pagoda.server.protocol import (
    DetokenizeResponse,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    TokenizeResponse,
    UnloadLoRAAdapterRequest,
)
from pagoda.server.serving_chat import ChatServing
from pagoda.server.serving_completion import CompletionServing
from pagoda.server.serving_embedding import EmbeddingServing
from pagoda.server.serving_responses import ResponsesServing
from pagoda.server.serving_tokenization import TokenizationServing
from pagoda.server.slow_client_guard import SlowClientGuard
from pagoda.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_STATS_TIMEOUT_S = 2.0  # a scrape waits at most this long for the engine to finish its step


def build_app(client: EngineClient, config: ServerConfig, tokenizer: Tokenizer | None = None) -> FastAPI:
    """The app for an engine that has started (``client.info`` is set); ``tokenizer`` replaces the
    engine's own for rendering chats (several apps over one engine with other chat templates)."""
    assert client.info is not None, "start the EngineClient first"
    tokenizer = tokenizer or client.info.tokenizer
    name = config.served_model_name or client.info.model_name
    loras = _lora_models(client, config, name)
    model = ModelInfo(name=name, max_model_len=client.info.max_model_len, vocab_size=client.info.vocab_size,
                      loras=loras)
    # data parallelism on Ray: engine families labelled per replica and node
    metrics = ServerMetrics(model.name, lambda: client.latest_stats, getattr(client, "labelled_stats", None))
    completions = CompletionServing(client, tokenizer, model, config, metrics)
    chat = ChatServing(client, tokenizer, model, config, metrics)
    tokenization = TokenizationServing(client, tokenizer, model, config, metrics)
    responses = ResponsesServing(client, tokenizer, model, config, metrics)
    embeddings = EmbeddingServing(client, tokenizer, model, config, metrics)

    app = FastAPI(title="Pagoda", description="OpenAI-compatible LLM server")
    install_error_handlers(app)
    # body size and read time, requests at once, and a full queue answered before the body is read
    app.add_middleware(SlowClientGuard, config=config,
                       queue_full=lambda: client.num_waiting >= config.max_waiting)
    if config.idle_memory_release_s > 0:  # outermost: every API request, a fast 503 included, is activity
        app.add_middleware(IdleMemoryRelease, idle_s=config.idle_memory_release_s)
    bearer = HTTPBearer(auto_error=False)

    async def check_api_key(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.api_key is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), config.api_key.encode()):
            raise APIError(401, "Incorrect API key provided." if creds else "Missing API key: send "
                           "'Authorization: Bearer <key>'.", code="invalid_api_key")

    api = APIRouter(dependencies=[Depends(check_api_key)])

    @api.get("/v1/models")
    async def list_models() -> ModelList:
        cards = [ModelCard(id=model.name, max_model_len=model.max_model_len, root=model.name)]
        cards += [ModelCard(id=a.lora_name, max_model_len=model.max_model_len, root=a.lora_path, parent=model.name)
                  for a in (loras.adapters() if loras is not None else [])]
        return ModelList(data=cards)

    @api.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        body = await parse_body(request, LoadLoRAAdapterRequest)
        registry = _runtime_lora(loras, config)
        registry.load(body.lora_name, body.lora_path)
        return JSONResponse({"status": "ok", "message": f"LoRA adapter {body.lora_name!r} loaded"})

    @api.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        body = await parse_body(request, UnloadLoRAAdapterRequest)
        lora = _runtime_lora(loras, config).unload(body.lora_name)
        client.unload_lora(lora.lora_int_id)
        return JSONResponse({"status": "ok", "message": f"LoRA adapter {body.lora_name!r} unloaded"})

    @api.post("/v1/completions")
    async def create_completion(request: Request) -> Response:
        return await completions.create(request)

    @api.post("/v1/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        return await chat.create(request)

    @api.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await responses.create_response(request)

    @api.post("/v1/embeddings")
    async def create_embedding(request: Request) -> Response:
        return await embeddings.create(request)

    @api.post("/tokenize")
    async def tokenize(request: Request) -> TokenizeResponse:
        return await tokenization.tokenize(request)

    @api.post("/detokenize")
    async def detokenize(request: Request) -> DetokenizeResponse:
        return await tokenization.detokenize(request)

    if config.image_model is not None:
        from pagoda.server.images import make_router

        api.include_router(make_router(config.image_model))

    app.include_router(api)
    if config.web_ui:
        from pagoda.server.web_ui import make_router as make_web_ui_router

        app.include_router(make_web_ui_router(client, config, model.name))

    @app.get("/health")
    async def health() -> Response:
        if not client.alive:
            return APIError(503, f"engine is not running: {client.dead_reason or 'stopped'}",
                            code="engine_dead").response()
        degraded = getattr(client, "degraded_reason", None)  # some data-parallel replicas down, others serving
        if degraded:
            return JSONResponse({"status": "degraded", "detail": degraded})
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        if client.alive:
            try:
                await client.get_stats(timeout_s=_STATS_TIMEOUT_S)  # refreshes client.latest_stats
            except Exception:  # noqa: BLE001 - a slow or dead engine: serve the last stats we have
                logger.warning("metrics: engine stats are stale")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _lora_models(client: EngineClient, config: ServerConfig, base_name: str) -> LoRAModels | None:
    assert client.info is not None
    rank = client.info.max_lora_rank
    if rank is None:
        if config.lora_modules or config.allow_runtime_lora:
            raise ValueError("--lora-modules and --allow-runtime-lora need --enable-lora")
        return None
    try:
        return LoRAModels(base_name, rank, config.lora_modules)
    except APIError as exc:  # a bad --lora-modules entry: refuse to start, naming it
        raise ValueError(exc.message) from None


def _runtime_lora(loras: LoRAModels | None, config: ServerConfig) -> LoRAModels:
    if loras is None:
        raise APIError(400, "LoRA is not enabled on this server (start it with --enable-lora)")
    if not config.allow_runtime_lora:
        raise APIError(403, "loading and unloading LoRA adapters at run time is off: start the server "
                            "with --allow-runtime-lora", code="runtime_lora_disabled")
    return loras
