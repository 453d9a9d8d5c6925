"""The contract between the engine and whatever runs the model: one process (``ModelRunner``), the
multi-process executor (``pagoda.distributed.executor.MultiprocExecutor``), a GPU runner to come."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pagoda.distributed.parallel_stats import ParallelStats
    from pagoda.engine.model_runner import ModelRunnerOutput
    from pagoda.engine.scheduler_output import SchedulerOutput


@runtime_checkable
class Runner(Protocol):
    """Runs scheduled steps on the model and its KV cache.

    - ``submit(out)`` starts a step and returns a handle; ``complete(handle)`` returns its sampled
      tokens. Steps complete in the order they were submitted; up to ``num_virtual_engines`` may be in
      flight (a pipeline's stages work on several at once; one process has 1). ``execute(out)`` is
      ``complete(submit(out))``.
    - A step that raises fails its own requests only: the runner stays usable while ``alive``.
      Requests whose own code fails (a logits processor) are listed in ``ModelRunnerOutput.failed``.
    - ``stats()``: per-rank seconds of a multi-process runner (it may stop every rank to gather
      them, so callers rate-limit), None for one process.
    - ``shutdown()``: stops worker processes, leaves the process group, frees the KV cache and
      removes temporary files; idempotent. Nothing may be submitted afterwards.
    """

    @property
    def num_virtual_engines(self) -> int: ...

    @property
    def alive(self) -> bool: ...

    def submit(self, out: SchedulerOutput) -> Any: ...

    def complete(self, handle: Any) -> ModelRunnerOutput: ...

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput: ...

    def stats(self) -> ParallelStats | None: ...

    def shutdown(self) -> None: ...
