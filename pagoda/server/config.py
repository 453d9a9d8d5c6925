"""Options of the HTTP layer, resolved once by ``pagoda serve`` (the engine has its own EngineArgs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # the name clients pass as `model`; default: the engine's
    api_key: str | None = None  # when set, /v1/* and /tokenize need "Authorization: Bearer <key>"
    max_waiting: int = 1024  # accepted requests with no output yet; past it new ones get 503
    retry_after_s: int = 1  # the Retry-After header of a 503
    image_model: str | None = None  # a diffusion model for /v1/images/generations, if any
    log_level: str = "info"
    web_ui: bool = True  # the chat page at / and the live dashboard at /dashboard
    tool_call_parser: str | None = None  # the format of tool calls; default: from the chat template, else hermes
    pooling: str = "last"  # /v1/embeddings: the last prompt token's final hidden state, or "mean"
    reasoning_parser: str | None = None  # e.g. "think": <think>...</think> becomes message.reasoning_content
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, adapter directory) served as models (needs enable_lora)
    allow_runtime_lora: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter
