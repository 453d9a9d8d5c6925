"""A real LLMEngine with injected faults, built inside the spawned engine process.

seed 666: a logits processor raises during the step (the engine fails that request only);
seed 667: add_request raises an unexpected exception.
"""

from __future__ import annotations

from typing import Any

from pagoda.engine.args import EngineArgs
from pagoda.server.engine_process import make_llm_engine


def _boom(_ids: Any, _logits: Any) -> Any:
    raise RuntimeError("injected fault in a logits processor")


def make_faulty_engine(args: EngineArgs) -> Any:
    engine = make_llm_engine(args)
    add_request = engine.add_request

    def faulty_add_request(request_id: str, prompt: Any, params: Any, **kw: Any) -> None:
        if params.seed == 666:
            params.logits_processors.append(_boom)
        if params.seed == 667:
            raise RuntimeError("injected fault in add_request")
        add_request(request_id, prompt, params, **kw)

    engine.add_request = faulty_add_request
    return engine
