"""The multi-process executor: the engine's ``Runner`` when a model spans several ranks.

Rank 0 runs in the engine's process: it prepares the step's tensors, publishes them to the other
ranks (one message through shared memory), runs its own shard, and samples. The ranks meet inside
the model's forward at each layer's all-reduce. A pipeline keeps several steps in flight
(``submit`` before ``complete``).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.util import Finalize
from typing import Any

import torch
import torch.distributed as dist

from pagoda.config import CacheConfig, ModelConfig
from pagoda.distributed.messages import (
    MicroBatch,
    ShutdownMessage,
    StatsMessage,
    StepMessage,
    TimelineMessage,
    encode,
)
from pagoda.distributed.parallel_config import ParallelConfig
from pagoda.distributed.parallel_stats import ParallelStats
from pagoda.distributed.rank_stats import BusySpan, spans_from_tensor
from pagoda.distributed.shm_comm import PeerLost
from pagoda.distributed.worker import (
    SPEC_KEY,
    RankState,
    WorkerSpec,
    create_node_segments,
    node_shm_name,
)
from pagoda.engine.model_runner import ModelRunnerOutput, StepInputs
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.lora.config import LoRAConfig
from pagoda.lora.request import LoRARequest
from pagoda.sample.sampler import Sampler

logger = logging.getLogger(__name__)


@dataclass
class InFlightStep:
    """A step that stage 0 has run and sent on; its results come back from the last stage."""

    parts: list[StepInputs]
    hidden: list[torch.Tensor | None]  # stage 0's outputs (the final hidden states when there is one stage)


class MultiprocExecutor:
    """The ``Runner`` of a tensor / pipeline parallel layout: worker ranks in their own processes,
    rank 0 here. ``shutdown()`` (or this object being dropped, or the process exiting) stops the
    workers, leaves the process group and removes the shared memory and the temp folder."""

    def __init__(self, parallel: ParallelConfig, model_path: str, model_config: ModelConfig,
                 cache_config: CacheConfig, sampler: Sampler, quantization: str | None,
                 lora: LoRAConfig | None = None) -> None:
        parallel.validate(model_config)
        _claim_process_group()
        self.parallel = parallel
        if parallel.nnodes > 1:
            if parallel.node_rank != 0:
                raise ValueError("the engine runs on node 0; other nodes run `python -m pagoda.distributed.node`")
            if parallel.master_port is None:
                raise ValueError("a multi-host layout needs master_port (or $MASTER_PORT)")
            name = node_shm_name(parallel.master_port, 0)
        else:
            name = f"pagoda-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._procs: list[subprocess.Popen] = []
        self._error_dir = tempfile.mkdtemp(prefix="pagoda-ranks-")
        self._segments = create_node_segments(name, parallel, model_config, 0)
        self._resources: dict[str, Any] = {}  # what shutdown releases besides procs and segments
        # multiprocessing's Finalize (a weakref finalizer that also runs at exit): it also runs when
        # this engine lives in a multiprocessing child (the server's engine process), which exits
        # without atexit handlers. Its arguments must not refer back to this object.
        self._finalizer = Finalize(self, _shutdown, (self._resources, self._procs, self._segments, self._error_dir),
                                   exitpriority=10)
        port = parallel.master_port or _free_port()
        init_method = f"tcp://{parallel.master_addr}:{port}"
        if parallel.nnodes > 1:  # the other hosts' launchers fetch their ranks' spec from here
            store = dist.TCPStore(parallel.master_addr, port + 1, is_master=True, wait_for_workers=False)
            # bytes are fine; torch's stub says str
            store.set(SPEC_KEY, pickle.dumps(WorkerSpec(  # type: ignore[arg-type]
                -1, parallel, model_path, model_config, cache_config, quantization, "", init_method, lora=lora)))
            self._resources["spec_store"] = store
        for rank in parallel.local_ranks(0)[1:]:
            spec = WorkerSpec(rank, parallel, model_path, model_config, cache_config, quantization, name,
                              init_method, os.path.join(self._error_dir, f"rank{rank}.err"), lora)
            proc = subprocess.Popen([sys.executable, "-m", "pagoda.distributed.worker"], stdin=subprocess.PIPE)
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
            self._procs.append(proc)
        spec0 = WorkerSpec(0, parallel, model_path, model_config, cache_config, quantization, name,
                           init_method, lora=lora)
        watchdog = functools.partial(_check_workers, parallel.local_ranks(0)[1:], self._procs, self._error_dir)
        try:
            self.state = RankState(spec0, watchdog, sampler)
            self._resources["state"] = self.state
            self.state.comm.barrier()  # every rank has loaded its shard
        except BaseException:
            self._finalizer()  # stop the workers and remove the segments now, not at exit
            raise
        self.runner = self.state.runner
        self._step_s = 0.0

    def add_lora(self, request: LoRARequest) -> None:
        """Checks an adapter on the driver; the other ranks read their shards when a step places it."""
        self.runner.add_lora(request)

    def remove_lora(self, lora_id: int) -> None:
        self.runner.remove_lora(lora_id)

    def _check_workers(self) -> None:
        """Raises if a worker has died (called while waiting on the ranks)."""
        _check_workers(self.parallel.local_ranks(0)[1:], self._procs, self._error_dir)

    @property
    def alive(self) -> bool:
        return all(p.poll() is None for p in self._procs)

    @property
    def num_virtual_engines(self) -> int:
        """How many steps the engine may keep in flight (``submit`` before ``complete``)."""
        return self.parallel.pipeline_virtual_engines if self.parallel.pipeline_parallel_size > 1 else 1

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        return self.complete(self.submit(out))

    @torch.inference_mode()
    def submit(self, out: SchedulerOutput) -> InFlightStep:
        """Publishes the step and runs this rank's part micro-batch by micro-batch (stage 0 sends
        each on and goes to the next); returns without waiting for the later stages."""
        self._check_workers()  # fail fast rather than wait on a rank that is gone
        t0 = time.perf_counter()
        runner, stats = self.runner, self.state.stats
        parts = [runner.prepare(o) for o in split_micro_batches(out, self._num_micro_batches())]
        self.state.publish(StepMessage([MicroBatch(p.input_ids, p.positions, p.metadata, p.block_copies, p.lora)
                                   for p in parts]))
        hidden: list[torch.Tensor | None] = []
        for k, inputs in enumerate(parts):
            with stats.busy(self.state.comm_seconds, micro_batch=k):
                hidden.append(runner.forward(inputs))
        self._step_s += time.perf_counter() - t0
        return InFlightStep(parts, hidden)

    @torch.inference_mode()
    def complete(self, step: InFlightStep) -> ModelRunnerOutput:
        """Samples each micro-batch of a submitted step as its hidden states come back from the last
        stage (steps complete in the order they were submitted)."""
        t0 = time.perf_counter()
        runner, stats = self.runner, self.state.stats
        result = ModelRunnerOutput()
        hidden_size = self.state.config.hidden_size
        for k, inputs in enumerate(step.parts):
            h = step.hidden[k]
            if self.state.out_ring is not None:  # the last stage's output (waiting here is bubble)
                (h,) = self.state.out_ring.recv([(inputs.input_ids.shape[0], hidden_size)],
                                                torch.float32)  # the final norm's output is float32
            assert h is not None  # the last stage's hidden states, here or from the ring
            with stats.busy(self.state.comm_seconds, micro_batch=k):
                _merge(result, runner.sample(inputs, h))
        self._step_s += time.perf_counter() - t0
        return result

    def _num_micro_batches(self) -> int:
        return self.parallel.pipeline_micro_batches if self.parallel.pipeline_parallel_size > 1 else 1

    def stats(self) -> ParallelStats:
        """Every rank's seconds (the workers answer through an all-gather)."""
        self.state.publish(StatsMessage())
        rows = self.state.comm.all_gather(self.state.stats.as_tensor())
        return ParallelStats([float(r[0]) for r in rows], [float(r[1]) for r in rows], [float(r[2]) for r in rows],
                             self._step_s)

    def timeline(self) -> list[list[BusySpan]]:
        """Every rank's recent busy spans, rank order (for the pipeline picture)."""
        self.state.publish(TimelineMessage())
        return [spans_from_tensor(t) for t in self.state.comm.all_gather(self.state.stats.spans_tensor())]

    def shutdown(self) -> None:
        self._finalizer()


def _claim_process_group() -> None:
    """A process holds one default process group: a dropped engine's finalizer may still have to
    release it (when the engine was in a reference cycle); a live one must be shut down first."""
    if dist.is_initialized():
        gc.collect()
    if dist.is_initialized():
        raise RuntimeError("another tensor / pipeline parallel engine in this process still holds the "
                           "torch.distributed process group: call its shutdown() (or build it in "
                           "`with LLM(...) as llm:`) before building the next one")


def _check_workers(ranks: Sequence[int], procs: list[subprocess.Popen], error_dir: str) -> None:
    for rank, proc in zip(ranks, procs, strict=True):
        if proc.poll() is not None:
            path = os.path.join(error_dir, f"rank{rank}.err")
            detail = open(path).read() if os.path.exists(path) else ""
            raise PeerLost(f"worker rank {rank} exited with code {proc.returncode}\n{detail}".rstrip())


def _shutdown(resources: dict[str, Any], procs: list[subprocess.Popen], segments: list[str], error_dir: str) -> None:
    state: RankState | None = resources.pop("state", None)
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
    elif dist.is_initialized():  # rank 0 failed after joining the group
        dist.destroy_process_group()
    resources.clear()  # the spec store's server closes with it
    for path in segments:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    shutil.rmtree(error_dir, ignore_errors=True)


def split_micro_batches(out: SchedulerOutput, n: int) -> list[SchedulerOutput]:
    """Up to ``n`` parts with about equal token counts (largest requests placed first, each on the
    lightest part); block copies go with the first part, which every stage runs first."""
    n = max(1, min(n, len(out.scheduled)))
    if n == 1:
        return [out]
    parts: list[list[ScheduledRequest]] = [[] for _ in range(n)]
    loads = [0] * n
    for s in sorted(out.scheduled, key=lambda s: -s.num_new_tokens):
        i = loads.index(min(loads))
        parts[i].append(s)
        loads[i] += s.num_new_tokens
    return [replace(out, scheduled=p, block_copies=out.block_copies if i == 0 else [])
            for i, p in enumerate(parts)]


def _merge(into: ModelRunnerOutput, part: ModelRunnerOutput) -> None:
    into.sampled.update(part.sampled)
    into.logprobs.update(part.logprobs)
    into.prompt_logprobs.update(part.prompt_logprobs)
    into.failed.update(part.failed)
    into.spec_accepted.update(part.spec_accepted)
    into.spec_logprobs.update(part.spec_logprobs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
