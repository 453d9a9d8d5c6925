"""How a model is laid out over processes: resolved once from the engine args, frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pagoda.config import ModelConfig
from pagoda.engine.args import EngineArgs


@dataclass(frozen=True)
class ParallelConfig:
    """Each option keeps its ``EngineArgs`` name and default; the others are resolved values."""

    tensor_parallel_size: int = EngineArgs.tensor_parallel_size
    pipeline_parallel_size: int = EngineArgs.pipeline_parallel_size
    distributed_backend: str = EngineArgs.distributed_backend
    num_threads: int = 1  # per rank, resolved (EngineArgs' None: the host's cores shared out)
    master_addr: str = "127.0.0.1"  # resolved (EngineArgs' None: $MASTER_ADDR, else this host)
    master_port: int | None = EngineArgs.master_port  # None: a free port on this host
    startup_timeout_s: float = EngineArgs.startup_timeout_s
    pipeline_micro_batches: int = EngineArgs.pipeline_micro_batches  # stage s works on micro-batch k while s+1 has k-1
    pipeline_virtual_engines: int = 1  # resolved: steps in flight with PP (each its own scheduler, as vLLM's)
    pipeline_stage_layers: tuple[int, ...] | None = EngineArgs.pipeline_stage_layers  # None: balanced by cost
    max_num_batched_tokens: int = EngineArgs.max_num_batched_tokens  # sizes the activation slots between stages
    nnodes: int = EngineArgs.nnodes  # hosts; ranks are numbered host by host, rank 0 (the driver) on node 0
    node_rank: int = EngineArgs.node_rank

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> ParallelConfig:
        """The tensor / pipeline layout, resolved: each rank gets the host's cores shared out."""
        ranks = args.tensor_parallel_size * args.pipeline_parallel_size // args.nnodes  # on this host
        port = args.master_port or (int(os.environ["MASTER_PORT"]) if "MASTER_PORT" in os.environ else None)
        return cls(
            tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
            distributed_backend=args.distributed_backend,
            num_threads=args.num_threads or max(1, (os.cpu_count() or 1) // ranks),
            pipeline_micro_batches=args.pipeline_micro_batches,
            pipeline_virtual_engines=args.pipeline_virtual_engines or args.pipeline_parallel_size,
            pipeline_stage_layers=args.pipeline_stage_layers,
            max_num_batched_tokens=args.max_num_batched_tokens, nnodes=args.nnodes, node_rank=args.node_rank,
            master_addr=args.master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1"), master_port=port,
            startup_timeout_s=args.startup_timeout_s)

    @property
    def ring_slots(self) -> int:
        """Activations a link between stages must hold: every micro-batch of every step in flight
        (fewer could deadlock: the driver sending the next step while the last stage waits to
        hand back the previous one)."""
        return self.pipeline_micro_batches * self.pipeline_virtual_engines

    @property
    def message_slots(self) -> int:
        """Driver messages a rank may have yet to read: each step in flight publishes its step and,
        with TP, one LM-head call per micro-batch, and the last stage reads them a step behind."""
        if self.pipeline_parallel_size == 1:
            return 1
        return self.pipeline_virtual_engines * (1 + self.pipeline_micro_batches)

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nnodes

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def local_ranks(self, node: int) -> range:
        return range(node * self.ranks_per_node, (node + 1) * self.ranks_per_node)

    def tp_group_local(self, stage: int) -> bool:
        """Whether a stage's TP ranks share one host (then their collectives go through shared memory)."""
        tp = self.tensor_parallel_size
        return self.node_of(stage * tp) == self.node_of(stage * tp + tp - 1)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def stage_of(self, rank: int) -> int:
        return rank // self.tensor_parallel_size

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tensor_parallel_size

    def validate(self, config: ModelConfig) -> None:
        """Refuses a layout the model cannot take, before any process starts."""
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        if self.nnodes > 1 and self.master_port is None:
            raise ValueError("several hosts need --master-addr and --master-port (node 0's address)")
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        if heads % tp:
            raise ValueError(f"tensor_parallel_size {tp} does not divide the model's {heads} attention heads")
        if kv % tp and tp % kv:
            raise ValueError(f"tensor_parallel_size {tp} must divide the model's {kv} key/value heads "
                             f"or be a multiple of them (then they are replicated)")
        for name, n in (("intermediate size", config.intermediate_size),):
            if n % tp:
                raise ValueError(f"tensor_parallel_size {tp} does not divide the model's {name} ({n})")
        if pp > config.num_hidden_layers:
            raise ValueError(f"pipeline_parallel_size {pp} exceeds the model's {config.num_hidden_layers} layers")
        self.stage_layer_ranges(config)

    def stage_layer_ranges(self, config: ModelConfig) -> list[range]:
        """Each stage's layers: ``pipeline_stage_layers`` when given, else balanced by cost with the LM head
        counted on stage 0 (SmolLM2-135M on 2 stages: 11 + 19 layers)."""
        from pagoda.distributed.pipeline_stage import lm_head_cost_in_layers, split_layers

        sizes = list(self.pipeline_stage_layers) if self.pipeline_stage_layers else None
        return split_layers(config.num_hidden_layers, self.pipeline_parallel_size, sizes,
                            lm_head_cost_in_layers(config))


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    """KV heads held by one rank: a shard, or one replicated head when TP exceeds them."""
    return num_kv_heads // tp if num_kv_heads >= tp else 1
