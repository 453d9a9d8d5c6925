"""A worker rank: loads its shard, then runs the driver's messages until told to stop.

Rank 0 (the driver) lives in the engine's process; ranks 1..N-1 run ``worker_main`` in processes
the executor starts. Every rank builds the same ``RankState`` (process group, communicators,
model shard, KV cache), so the driver and the workers cannot drift apart. Rank r is TP rank
``r % tp`` of pipeline stage ``r // tp``.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import cast

import torch
import torch.distributed as dist

from pagoda.config import CacheConfig, ModelConfig
from pagoda.distributed.driver_model import DriverModel
from pagoda.distributed.gloo_channels import GlooLink, GlooWorld
from pagoda.distributed.host_tensor_parallel import HostTensorParallel
from pagoda.distributed.messages import (
    LogitsMessage,
    Message,
    ShutdownMessage,
    StatsMessage,
    StepMessage,
    TimelineMessage,
    decode,
    encode,
)
from pagoda.distributed.parallel_config import ParallelConfig, kv_heads_per_rank
from pagoda.distributed.pipeline_stage import (
    PipelineStage,
    StageFiles,
    stage_keeps,
    stage_pruner,
)
from pagoda.distributed.rank_stats import RankStats
from pagoda.distributed.shm_comm import PeerLost, ShmCommunicator, create_segment
from pagoda.distributed.shm_ring import ShmRing, create_ring
from pagoda.engine.model_runner import ModelRunner, StepInputs
from pagoda.lora.config import LoRAConfig
from pagoda.lora.manager import LoRAManager
from pagoda.parallel import TensorParallel
from pagoda.sample.sampler import Sampler

# the world segment carries the driver's step messages; each stage's TP segment its all-reduces
WORLD_SLOT_BYTES = 64 << 10
WORLD_MESSAGE_BYTES = 32 << 20
SPEC_KEY = "pagoda/worker_spec"  # in node 0's spec store: the ranks' spec, for the other hosts' launchers


def node_shm_name(master_port: int, node: int) -> str:
    """Shared-memory names of one host of a multi-host layout (the same on all its ranks)."""
    return f"pagoda-{master_port}-n{node}"


def ring_names(shm_name: str, parallel: ParallelConfig) -> dict[str, tuple[int, int]]:
    """Shared-memory rings of a layout: name -> (sender rank, receiver rank). Each TP rank of a stage
    sends to the same TP rank of the next; the last stage's TP rank 0 returns hidden states to rank 0."""
    tp, pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
    rings = {f"{shm_name}-act{s}-{t}": ((s - 1) * tp + t, s * tp + t) for s in range(1, pp) for t in range(tp)}
    if pp > 1:
        rings[f"{shm_name}-out"] = ((pp - 1) * tp, 0)
    return rings


def ring_slot_bytes(parallel: ParallelConfig, config: ModelConfig) -> int:
    return parallel.max_num_batched_tokens * config.hidden_size * 2 * 4  # hidden + residual, up to float32


def create_node_segments(shm_name: str, parallel: ParallelConfig, config: ModelConfig, node: int) -> list[str]:
    """Creates the shared-memory segments the ranks of one host use; returns their paths (to unlink)."""
    p = parallel
    paths = []
    if p.nnodes == 1:
        paths.append(create_segment(f"{shm_name}-w", p.world_size, WORLD_SLOT_BYTES, WORLD_MESSAGE_BYTES,
                                    p.message_slots))
    if p.tensor_parallel_size > 1 and p.distributed_backend == "shm":
        paths += [create_segment(f"{shm_name}-tp{s}", p.tensor_parallel_size)
                  for s in range(p.pipeline_parallel_size)
                  if p.tp_group_local(s) and p.node_of(s * p.tensor_parallel_size) == node]
    slot = ring_slot_bytes(p, config)
    paths += [create_ring(name, p.ring_slots, slot) for name, (src, dst) in ring_names(shm_name, p).items()
              if p.node_of(src) == node and p.node_of(dst) == node]
    return paths


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rank needs to start (crosses the process boundary)."""

    rank: int
    parallel: ParallelConfig
    model_path: str
    model_config: ModelConfig
    cache_config: CacheConfig
    quantization: str | None
    shm_name: str
    init_method: str
    error_path: str = ""
    lora: LoRAConfig | None = None  # LoRA slots on every rank (tensor parallel only)


class RankState:
    """One rank's process group, communicators, model shard (its stage's layers) and KV cache.
    Rank 0 (the driver) also samples: it gets the engine's ``sampler``, and its runner's model
    announces each LM-head call to the other ranks."""

    def __init__(self, spec: WorkerSpec, watchdog: Callable[[], None], sampler: Sampler | None = None) -> None:
        from pagoda.weights.model_loader import ModelFiles, load_model

        p, config = spec.parallel, spec.model_config
        self.rank = spec.rank
        self.config = config
        torch.set_num_threads(p.num_threads)
        dist.init_process_group("gloo", init_method=spec.init_method, rank=spec.rank, world_size=p.world_size,
                                timeout=timedelta(seconds=p.startup_timeout_s))
        multi_host = p.nnodes > 1
        self.comm = GlooWorld(spec.rank, p.world_size, p.message_slots) if multi_host else ShmCommunicator(
            f"{spec.shm_name}-w", spec.rank, p.world_size, WORLD_SLOT_BYTES, WORLD_MESSAGE_BYTES, watchdog=watchdog,
            message_slots=p.message_slots)
        tp_size, tp_rank, stage = p.tensor_parallel_size, p.tp_rank_of(spec.rank), p.stage_of(spec.rank)
        self.stage = stage
        self.tp_comm: ShmCommunicator | None = None
        groups = []
        if tp_size > 1 and (p.distributed_backend == "gloo" or multi_host):  # every rank takes part in creating every group
            groups = [dist.new_group(list(range(s * tp_size, (s + 1) * tp_size)))
                      for s in range(p.pipeline_parallel_size)]
        if tp_size == 1:
            tp = TensorParallel()
        elif p.distributed_backend == "shm" and p.tp_group_local(stage):
            self.tp_comm = ShmCommunicator(f"{spec.shm_name}-tp{stage}", tp_rank, tp_size, watchdog=watchdog)
            tp = HostTensorParallel(tp_rank, tp_size, None, self.tp_comm)
        else:
            tp = TensorParallel(tp_rank, tp_size, groups[stage])

        pp = p.pipeline_parallel_size
        layers = p.stage_layer_ranges(config)[stage]
        first, last = stage == 0, stage == pp - 1
        files: ModelFiles | StageFiles = ModelFiles(spec.model_path)
        prune = None
        if pp > 1:
            files = StageFiles(files, lambda name: stage_keeps(name, layers, first, last))
            prune = stage_pruner(layers, first, last)
        # StageFiles answers the same reads as ModelFiles
        self.model = load_model(cast(ModelFiles, files), config, torch.device("cpu"), quantization=spec.quantization,
                                show_progress=False, tp=tp, prune=prune)
        self.rings: list[ShmRing | GlooLink] = []
        self.out_ring: ShmRing | GlooLink | None = None
        recv = send = None
        slot = ring_slot_bytes(p, config)
        for name, (src, dst) in ring_names(spec.shm_name, p).items():
            if spec.rank in (src, dst):
                ring: ShmRing | GlooLink
                if p.node_of(src) == p.node_of(dst):
                    ring = ShmRing(name, p.ring_slots, slot, watchdog)
                else:  # the next stage is on another host
                    ring = GlooLink(dst if spec.rank == src else src, p.ring_slots)
                self.rings.append(ring)
                if spec.rank == dst and stage > 0:
                    recv = ring
                elif spec.rank == src:
                    send = ring
                else:
                    self.out_ring = ring  # rank 0: the final hidden states come back here
        self.stage_module = PipelineStage(self.model, layers, first, last, recv, send)
        # the KV cache holds only this rank's heads of this stage's layers
        shard = replace(config, num_key_value_heads=kv_heads_per_rank(config.num_key_value_heads, tp_size),
                        num_hidden_layers=len(layers))
        model = DriverModel(self.stage_module, self.publish) if spec.rank == 0 else self.stage_module
        self.runner = ModelRunner(model, shard, spec.cache_config, sampler, torch.device("cpu"))
        if spec.lora is not None:  # each rank shards the adapters the driver's plan places
            self.runner.lora = LoRAManager(self.model, spec.lora, config.dtype)
        self.stats = RankStats()

    def publish(self, message: Message) -> None:
        """Sends the driver's message to every other rank."""
        self.comm.send_message(encode(message))

    def comm_seconds(self) -> float:
        return self.tp_comm.comm_seconds if self.tp_comm is not None else 0.0

    def wait_seconds(self) -> float:
        """Time blocked on the previous stage (the pipeline bubble this rank sat in)."""
        return self.stage_module.recv.wait_seconds if self.stage_module.recv is not None else 0.0

    def close(self) -> None:
        self.runner.shutdown()  # the KV cache
        for c in (self.comm, self.tp_comm, *self.rings):
            if c is not None:
                c.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def worker_main(spec: WorkerSpec) -> None:
    """A worker process's life; a failure leaves its traceback in ``spec.error_path`` for the driver."""
    parent = os.getppid()

    def watchdog() -> None:
        if os.getppid() != parent:  # the engine is gone: nobody will send a shutdown
            os._exit(1)

    try:
        state = RankState(spec, watchdog)
        state.comm.barrier()  # ready
        _serve(state)
        state.close()
    except PeerLost:
        os._exit(1)
    except BaseException:
        with open(spec.error_path, "w") as f:
            f.write(traceback.format_exc())
        raise


@torch.inference_mode()
def _serve(state: RankState) -> None:
    runner = state.runner
    while True:
        message = decode(state.comm.recv_message())
        if isinstance(message, StepMessage):
            for k, mb in enumerate(message.micro_batches):
                inputs = StepInputs([], mb.input_ids, mb.positions, mb.metadata, mb.block_copies, mb.lora)
                with state.stats.busy(state.comm_seconds, state.wait_seconds, k):
                    runner.forward(inputs)
        elif isinstance(message, LogitsMessage):
            if state.stage == 0:  # the LM head lives with the driver's stage
                with state.stats.busy(state.comm_seconds, state.wait_seconds):
                    runner.model.compute_logits(message.hidden)
        elif isinstance(message, StatsMessage):
            state.comm.all_gather(state.stats.as_tensor())
        elif isinstance(message, TimelineMessage):
            state.comm.all_gather(state.stats.spans_tensor())
        elif isinstance(message, ShutdownMessage):
            return


if __name__ == "__main__":
    # started as `python -m pagoda.distributed.worker` (not multiprocessing's spawn, which would
    # re-run the user's main module); the spec comes pickled on stdin
    worker_main(pickle.load(sys.stdin.buffer))
