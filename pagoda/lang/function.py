"""``@function``: a Python function over a program state, run once or over a batch of arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from pagoda.lang.backend import LangBackend
from pagoda.lang.expressions import Gen
from pagoda.lang.program_state import ProgramState


def as_backend(backend: Any) -> LangBackend:
    """A LangBackend from a backend, an ``LLM``/``LLMEngine`` or a server URL (``http://...``)."""
    if isinstance(backend, LangBackend):
        return backend
    if isinstance(backend, str):
        from pagoda.lang.server_backend import ServerBackend

        return ServerBackend(backend)
    if hasattr(backend, "engine") or hasattr(backend, "step"):
        from pagoda.lang.engine_backend import EngineBackend

        return EngineBackend(backend)
    raise TypeError(f"not a backend: {type(backend).__name__} (give an LLM, a LangBackend or a server URL)")


class LangFunction:
    """A program. ``run(*args, backend=..., **kwargs)`` runs it on a fresh state and returns the state
    (finished); ``run_batch`` runs one program per argument dict concurrently, so their generations
    share engine batches. Sampling defaults for every ``gen``: ``temperature`` (0: greedy),
    ``max_tokens``, ``top_p``, ``stop``, ``seed``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__: str = getattr(fn, "__name__", type(fn).__name__)  # update_wrapper sets it too
        functools.update_wrapper(self, fn)

    def __call__(self, state: ProgramState, *args: Any, **kwargs: Any) -> Any:
        return self.fn(state, *args, **kwargs)  # a program calling another one on its own state

    def run(self, *args: Any, backend: Any, temperature: float = 0.0, max_tokens: int = 128,
            top_p: float = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
            **kwargs: Any) -> ProgramState:
        defaults = Gen(None, max_tokens=max_tokens, stop=stop, temperature=temperature, top_p=top_p, seed=seed)
        state = ProgramState(as_backend(backend), defaults)
        try:
            self.fn(state, *args, **kwargs)
            return state.sync()
        finally:
            state.close()

    def run_batch(self, batch_kwargs: Sequence[dict[str, Any]], *, backend: Any, num_threads: int | None = None,
                  progress_bar: bool = True, **defaults: Any) -> list[ProgramState]:
        lang_backend = as_backend(backend)
        workers = num_threads or max(1, min(64, len(batch_kwargs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pagoda-lang-run") as pool:
            futures = [pool.submit(self.run, backend=lang_backend, **defaults, **kw) for kw in batch_kwargs]
            with tqdm(total=len(futures), desc=self.__name__, unit=" prog", disable=not progress_bar) as bar:
                for f in futures:
                    f.add_done_callback(lambda _: bar.update(1))
                return [f.result() for f in futures]


def function(fn: Callable[..., Any]) -> LangFunction:
    """Decorates ``fn(state, ...)`` as a program."""
    return LangFunction(fn)
