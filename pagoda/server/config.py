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
    # --- bounds on what one client may ask (each violation: an OpenAI-style JSON error; see README) ---
    max_request_bytes: int = 4 * 1024 * 1024  # a body past it: 413, checked while it is read, before parsing
    body_read_timeout_s: float = 30.0  # a body not fully received by then (slowloris): 408
    header_read_timeout_s: float = 10.0  # a connection that has not sent complete headers by then is closed
    keep_alive_timeout_s: int = 5  # uvicorn's timeout_keep_alive: an idle kept-alive connection closes
    max_connections: int = 4096  # uvicorn's limit_concurrency: past it new connections get a plain 503
    max_concurrent_requests: int = 2048  # /v1 requests (streams included) being served at once; past it 503
    max_n: int = 128  # samples per request (OpenAI's limit)
    max_logprobs: int = 20  # logprobs / top_logprobs alternatives per token (OpenAI's limit)
    max_stop_strings: int = 16  # entries of `stop` (OpenAI allows 4; we allow more, boundedly)
    max_stop_chars: int = 1024  # characters of one stop string
    max_spec_chars: int = 256 * 1024  # a JSON schema / regex / grammar / choice list, serialized
    max_schema_depth: int = 64  # nesting of a JSON schema (objects and arrays)
    grammar_compile_timeout_s: float = 10.0  # structured-output compile (off the event loop); past it 400
    # added to the engine process's niceness: on cores the server has to itself, 10 lets the HTTP process
    # (503s, streaming) run first; off by default, as a niced engine also yields to every other process
    engine_nice: int = 0
    # once no API request has been in flight for this long, free memory goes back to the OS (glibc's
    # malloc_trim, on a thread; see idle_memory_release); 0 turns it off
    idle_memory_release_s: float = 2.0
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, adapter directory) served as models (needs enable_lora)
    allow_runtime_lora: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter
