"""The multi-process executor: the engine's ``runner`` when a model spans several ranks.

It keeps ``ModelRunner``'s one verb, ``execute(SchedulerOutput) -> ModelRunnerOutput``. Rank 0
runs in the engine's process: it prepares the step's tensors, publishes them to the other ranks
(one message through shared memory), runs its own shard, and samples. The ranks meet inside the
model's forward at each layer's all-reduce.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from dataclasses import dataclass

import torch

from pagoda.config import CacheConfig, ModelConfig
from pagoda.distributed.messages import (
    LogitsMessage,
    Message,
    ShutdownMessage,
    StatsMessage,
    StepMessage,
    encode,
)
from pagoda.distributed.parallel_config import ParallelConfig
from pagoda.distributed.shm_comm import PeerLost, create_segment
from pagoda.distributed.worker import (
    WORLD_MESSAGE_BYTES,
    WORLD_SLOT_BYTES,
    RankState,
    WorkerSpec,
)
from pagoda.engine.model_runner import ModelRunnerOutput
from pagoda.engine.scheduler_output import SchedulerOutput
from pagoda.sample.sampler import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelStats:
    """Per-rank busy and communication seconds since start, rank order."""

    busy_s: list[float]
    comm_s: list[float]
    wall_s: float

    @property
    def utilisation(self) -> list[float]:
        return [b / self.wall_s if self.wall_s else 0.0 for b in self.busy_s]

    @property
    def balance(self) -> float:
        """Least busy rank over most busy (1.0: even)."""
        return min(self.busy_s) / max(self.busy_s) if max(self.busy_s) else 1.0

    @property
    def comm_share(self) -> float:
        """Share of busy time spent inside collectives (waits for slower peers included)."""
        return sum(self.comm_s) / sum(self.busy_s) if sum(self.busy_s) else 0.0


class _DriverModel:
    """The driver's model shard, announcing each LM-head call so that the workers join its all-gather."""

    def __init__(self, model: torch.nn.Module, publish) -> None:
        self.model = model
        self.publish = publish

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        self.publish(LogitsMessage(hidden))
        return self.model.compute_logits(hidden)


class MultiprocExecutor:
    def __init__(self, parallel: ParallelConfig, model_path: str, model_config: ModelConfig,
                 cache_config: CacheConfig, sampler: Sampler, quantization: str | None) -> None:
        parallel.validate(model_config)
        self.parallel = parallel
        world = parallel.world_size
        name = f"pagoda-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._segments = [create_segment(f"{name}-w", world, WORLD_SLOT_BYTES, WORLD_MESSAGE_BYTES)]
        if parallel.tensor_parallel_size > 1 and parallel.backend == "shm":
            self._segments += [create_segment(f"{name}-tp{s}", parallel.tensor_parallel_size)
                               for s in range(parallel.pipeline_parallel_size)]
        port = parallel.master_port or _free_port()
        init_method = f"tcp://{parallel.master_addr}:{port}"
        self._procs: list[subprocess.Popen] = []
        self._error_dir = tempfile.mkdtemp(prefix="pagoda-ranks-")
        self._finalizer = weakref.finalize(self, _shutdown, None, self._procs, self._segments)
        for rank in range(1, world):
            spec = WorkerSpec(rank, parallel, model_path, model_config, cache_config, quantization, name,
                              init_method, os.path.join(self._error_dir, f"rank{rank}.err"))
            proc = subprocess.Popen([sys.executable, "-m", "pagoda.distributed.worker"], stdin=subprocess.PIPE)
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
            self._procs.append(proc)
        spec0 = WorkerSpec(0, parallel, model_path, model_config, cache_config, quantization, name,
                           init_method)
        self.state = RankState(spec0, self._check_workers)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, self.state, self._procs, self._segments)
        self.state.comm.barrier()  # every rank has loaded its shard
        self.runner = self.state.runner
        self.runner.sampler = sampler
        self.runner.model = _DriverModel(self.state.model, self._publish)
        self._start = time.perf_counter()

    def _publish(self, message: Message) -> None:
        self.state.comm.send_message(encode(message))

    def _check_workers(self) -> None:
        """Raises if a worker has died (called while waiting on the ranks)."""
        for rank, proc in enumerate(self._procs, start=1):
            if proc.poll() is not None:
                path = os.path.join(self._error_dir, f"rank{rank}.err")
                detail = open(path).read() if os.path.exists(path) else ""
                raise PeerLost(f"worker rank {rank} exited with code {proc.returncode}\n{detail}".rstrip())

    @property
    def alive(self) -> bool:
        return all(p.poll() is None for p in self._procs)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        self._check_workers()  # fail fast rather than wait on a rank that is gone
        runner = self.runner
        inputs = runner.prepare(out)
        self._publish(StepMessage(inputs.input_ids, inputs.positions, inputs.metadata, inputs.block_copies))
        with self.state.stats.busy(self.state.comm_seconds):
            hidden = runner.forward(inputs)
            return runner.sample(inputs, hidden)

    def stats(self) -> ParallelStats:
        """Every rank's busy / communication seconds (the workers answer through an all-gather)."""
        self._publish(StatsMessage())
        rows = self.state.comm.all_gather(self.state.stats.as_tensor())
        return ParallelStats([float(r[0]) for r in rows], [float(r[1]) for r in rows],
                             time.perf_counter() - self._start)

    def close(self) -> None:
        self._finalizer()


def _shutdown(state: RankState | None, procs: list[subprocess.Popen], segments: list[str]) -> None:
    if state is not None and all(p.poll() is None for p in procs):
        try:
            state.comm.send_message(encode(ShutdownMessage()))
        except Exception:  # noqa: BLE001  (best effort: the processes are reaped below)
            pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    if state is not None:
        state.close()
    for path in segments:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
