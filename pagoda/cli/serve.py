"""`pagoda serve`: an OpenAI-compatible server on the bundled model (or --model)."""

from __future__ import annotations

import argparse

HELP = "serve an OpenAI-compatible API (completions, chat, /metrics) on a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pagoda.distributed.ray_cluster import LOCAL_NODE_IP, RayConfig
    from pagoda.engine.args import EngineArgs
    from pagoda.server.config import ServerConfig
    from pagoda.server.reasoning_parser import REASONING_PARSERS
    from pagoda.server.tool_parsers import TOOL_PARSERS

    EngineArgs.add_cli_args(parser)
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=ServerConfig.host, help="address to listen on (0.0.0.0 for all)")
    g.add_argument("--port", type=int, default=ServerConfig.port)
    g.add_argument("--served-model-name", default=ServerConfig.served_model_name,
                   help="the model name clients pass (default: the model file or directory name)")
    g.add_argument("--api-key", default=ServerConfig.api_key, help="require 'Authorization: Bearer <key>' on the API")
    g.add_argument("--max-waiting", type=int, default=ServerConfig.max_waiting,
                   help="requests allowed to wait for their first token; past it new ones get 503 + Retry-After")
    g.add_argument("--image-model", default=ServerConfig.image_model, help="also serve /v1/images/generations with this model")
    g.add_argument("--tool-call-parser", default=ServerConfig.tool_call_parser, choices=sorted(TOOL_PARSERS),
                   help="the format of the model's tool calls (default: from the chat template, else hermes)")
    g.add_argument("--reasoning-parser", default=ServerConfig.reasoning_parser, choices=sorted(REASONING_PARSERS),
                   help="split <think>...</think> into message.reasoning_content (reasoning models)")
    g.add_argument("--pooling", default=ServerConfig.pooling, choices=["last", "mean"],
                   help="/v1/embeddings: the last prompt token's final hidden state, or the mean over the prompt")
    g.add_argument("--web-ui", action=argparse.BooleanOptionalAction, default=ServerConfig.web_ui,
                   help="the chat page at / and the live dashboard at /dashboard (--no-web-ui: neither)")
    b = parser.add_argument_group("bounds (each violation is an OpenAI-style JSON error; see README)")
    b.add_argument("--max-request-bytes", type=int, default=ServerConfig.max_request_bytes,
                   help="largest request body; past it 413 (checked while reading, before parsing)")
    b.add_argument("--body-read-timeout", type=float, default=ServerConfig.body_read_timeout_s,
                   help="seconds to receive a whole request body; past it 408")
    b.add_argument("--header-read-timeout", type=float, default=ServerConfig.header_read_timeout_s,
                   help="seconds for a connection to send its request headers; past it the connection closes")
    b.add_argument("--keep-alive-timeout", type=int, default=ServerConfig.keep_alive_timeout_s,
                   help="seconds an idle kept-alive connection stays open")
    b.add_argument("--max-connections", type=int, default=ServerConfig.max_connections,
                   help="open connections; past it uvicorn answers a plain 503")
    b.add_argument("--max-concurrent-requests", type=int, default=ServerConfig.max_concurrent_requests,
                   help="API requests (streams included) served at once; past it 503 + Retry-After")
    b.add_argument("--max-n", type=int, default=ServerConfig.max_n, help="largest n (samples per request)")
    b.add_argument("--max-logprobs", type=int, default=ServerConfig.max_logprobs,
                   help="largest logprobs / top_logprobs")
    b.add_argument("--max-stop-strings", type=int, default=ServerConfig.max_stop_strings,
                   help="most entries in stop")
    b.add_argument("--max-spec-chars", type=int, default=ServerConfig.max_spec_chars,
                   help="largest structured-output spec (schema, regex, grammar, choices), serialized")
    b.add_argument("--max-schema-depth", type=int, default=ServerConfig.max_schema_depth,
                   help="deepest nesting of a JSON schema")
    b.add_argument("--grammar-compile-timeout", type=float, default=ServerConfig.grammar_compile_timeout_s,
                   help="seconds a structured-output spec may take to compile (off the event loop); past it 400")
    b.add_argument("--engine-nice", type=int, default=ServerConfig.engine_nice,
                   help="added to the engine process's niceness (e.g. 10), so that the HTTP process (overload "
                        "503s, streaming) runs first when both want a core; the engine then also yields to every "
                        "other process on the machine")
    b.add_argument("--idle-memory-release", type=float, default=ServerConfig.idle_memory_release_s,
                   help="seconds with no API request in flight after which the server gives freed memory back "
                        "to the OS (glibc malloc_trim, off the event loop); 0: never")
    g.add_argument("--lora-modules", nargs="+", type=_lora_module, default=ServerConfig.lora_modules,
                   metavar="NAME=PATH", help="LoRA adapters (PEFT directories) served as models (needs --enable-lora)")
    g.add_argument("--allow-runtime-lora", action=argparse.BooleanOptionalAction,
                   default=ServerConfig.allow_runtime_lora,
                   help="allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter")
    r = parser.add_argument_group("Ray (pip install 'pagoda[ray]')")
    r.add_argument("--data-parallel-backend", default="mp", choices=["mp", "ray"],
                   help="mp: replicas are processes of this host; ray: Ray actors on the nodes of a Ray cluster")
    r.add_argument("--ray-node-ip", default=RayConfig.node_ip,
                   help=f"the address this server announces to Ray (a local Ray: {LOCAL_NODE_IP}, loopback)")
    r.add_argument("--max-replica-restarts", type=int, default=RayConfig.max_replica_restarts,
                   help="times Ray restarts a replica actor that died (then it stays down)")
    r.add_argument("--ray-placement-timeout", type=float, default=RayConfig.placement_timeout_s,
                   help="seconds to wait for the cluster to have room for the replicas; then the server refuses "
                        "to start, naming what is missing")
    g.add_argument("--log-level", default=ServerConfig.log_level, choices=["debug", "info", "warning", "error"])
    g.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False,
                   help="log every HTTP request")


def _lora_module(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def run(args: argparse.Namespace) -> int:
    from pagoda.distributed.ray_cluster import RayUnavailableError
    from pagoda.engine.args import EngineArgs
    from pagoda.server.api_server import run_server
    from pagoda.server.config import ServerConfig

    if args.max_waiting < 1:
        raise SystemExit("--max-waiting must be at least 1")
    config = ServerConfig(host=args.host, port=args.port, served_model_name=args.served_model_name,
                          api_key=args.api_key, max_waiting=args.max_waiting, image_model=args.image_model,
                          log_level=args.log_level, web_ui=args.web_ui, tool_call_parser=args.tool_call_parser,
                          reasoning_parser=args.reasoning_parser, pooling=args.pooling,
                          max_request_bytes=args.max_request_bytes, body_read_timeout_s=args.body_read_timeout,
                          header_read_timeout_s=args.header_read_timeout, keep_alive_timeout_s=args.keep_alive_timeout,
                          max_connections=args.max_connections, max_concurrent_requests=args.max_concurrent_requests,
                          max_n=args.max_n, max_logprobs=args.max_logprobs, max_stop_strings=args.max_stop_strings,
                          max_spec_chars=args.max_spec_chars, max_schema_depth=args.max_schema_depth,
                          grammar_compile_timeout_s=args.grammar_compile_timeout, engine_nice=args.engine_nice,
                          idle_memory_release_s=args.idle_memory_release,
                          lora_modules=tuple(args.lora_modules), allow_runtime_lora=args.allow_runtime_lora)
    if (config.lora_modules or config.allow_runtime_lora) and not args.enable_lora:
        raise SystemExit("--lora-modules and --allow-runtime-lora need --enable-lora")
    ray = None
    if "ray" in (args.data_parallel_backend, args.distributed_executor_backend):
        from pagoda.distributed.ray_cluster import RayConfig, import_ray

        try:
            import_ray()  # before anything loads: say at once what is missing
            if args.data_parallel_backend == "ray":
                ray = RayConfig(address=args.ray_address, node_ip=args.ray_node_ip,
                                max_replica_restarts=args.max_replica_restarts,
                                placement_timeout_s=args.ray_placement_timeout)
        except (RayUnavailableError, ValueError) as e:
            raise SystemExit(f"pagoda serve: {e}") from None
    engine_args = EngineArgs.from_cli_args(args)
    try:
        run_server(engine_args, config, access_log=args.access_log, ray=ray)
    except RayUnavailableError as e:  # the placement cannot be met
        raise SystemExit(f"pagoda serve: {e}") from None
    return 0
