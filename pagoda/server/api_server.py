"""Runs the whole server: the engine process, then uvicorn on the FastAPI app, until a signal."""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from pagoda.distributed.ray_cluster import RayConfig
from pagoda.engine.args import EngineArgs
from pagoda.server.app import build_app
from pagoda.server.config import ServerConfig
from pagoda.server.engine_client import EngineClient
from pagoda.server.engine_process_client import EngineProcessClient
from pagoda.server.slow_client_guard import header_timeout_protocol

logger = logging.getLogger(__name__)


def run_server(engine_args: EngineArgs, config: ServerConfig, *, access_log: bool = False,
               ray: RayConfig | None = None) -> None:
    """Blocks until uvicorn exits (Ctrl-C / SIGTERM), then stops the engine process. With ``ray``, the
    data-parallel replicas are Ray actors (even a single one)."""
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it; exit through Python (so the
    # engine process is stopped below) instead of dying on the spot
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if engine_args.data_parallel_size > 1 or ray is not None:  # replicas behind a router (issues 8, 21)
        from pagoda.server.data_parallel_client import DataParallelClient

        client: EngineClient = DataParallelClient(engine_args, ray=ray)
    else:
        client = EngineProcessClient(engine_args, nice=config.engine_nice)
    info = client.start()
    logger.info("engine ready: %s (max_model_len %d, pid %d)", info.model_name, info.max_model_len, info.pid)
    try:
        app = build_app(client, config)
        server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port,
                                               log_level=config.log_level, access_log=access_log,
                                               timeout_graceful_shutdown=5,
                                               http=header_timeout_protocol(config.header_read_timeout_s),
                                               timeout_keep_alive=config.keep_alive_timeout_s,
                                               limit_concurrency=config.max_connections))
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled after a graceful shutdown
        pass
    finally:
        client.shutdown()
        logger.info("engine stopped")
