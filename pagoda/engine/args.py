"""User-facing engine options, shared by ``LLM(...)``, ``pagoda generate/chat`` and ``pagoda serve``.

``EngineArgs`` is what users write; the engine resolves it once into the frozen configs of
``pagoda.config`` and passes each component only its part.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields


@dataclass
class EngineArgs:
    model: str | None = None  # HF directory or .gguf file; None: the bundled SmolLM2-135M-Instruct
    tokenizer: str | None = None  # defaults to the model's own
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16"
    quantization: str | None = "auto"  # "auto": "gguf" for GGUF files on CPU; "fp8": E4M3 weights; None: dense
    max_model_len: int | None = None
    block_size: int = 16
    kv_cache_memory_gb: float = 1.0  # KV pool budget
    num_kv_blocks: int | None = None  # overrides the budget (tests use tiny pools)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    batching: str = "continuous"  # "continuous" | "static"
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"  # "fcfs" | "priority" | "lpm"
    max_wait_s: float = 60.0  # starvation guard: older waiting requests go first, whatever the policy
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when torch sees a GPU) | "cpu" | "cuda" | "cuda:N"
    attention_backend: str = "auto"  # "auto" (triton on CUDA, else the C++ CPU kernels) | "cpu" | "torch" | "triton"
    enforce_eager: bool = False  # CUDA: no CUDA graphs for decode steps
    num_threads: int | None = None  # with TP/PP: threads per rank (default: the cores shared out)
    show_progress: bool = True
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1  # engine replicas behind the server's router
    distributed_backend: str = "shm"  # TP collectives on one host: "shm" (shared memory) or "gloo"
    router_policy: str = "prefix_aware"  # with DP: "round_robin" | "least_outstanding" | "prefix_aware"
    pipeline_micro_batches: int = 1  # with PP: micro-batches per step, in flight across the stages
    pipeline_virtual_engines: int | None = None  # with PP: steps in flight, each its own scheduler (None: one per stage)
    pipeline_stage_layers: tuple[int, ...] | None = None  # with PP: layers per stage (None: balanced by cost)
    nnodes: int = 1  # hosts of a TP/PP layout; the others run `python -m pagoda.distributed.node`
    node_rank: int = 0  # this engine is node 0
    master_addr: str | None = None  # node 0's address (default: $MASTER_ADDR, else 127.0.0.1)
    master_port: int | None = None  # default: $MASTER_PORT, else a free port (one host only)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("engine")
        g.add_argument("--model", default=None,
                       help="Hugging Face model directory or GGUF file (default: bundled SmolLM2-135M-Instruct)")
        g.add_argument("--tokenizer", default=None)
        g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
        g.add_argument("--quantization", default="auto", choices=["auto", "gguf", "fp8", "none"])
        g.add_argument("--max-model-len", type=int, default=None)
        g.add_argument("--block-size", type=int, default=16)
        g.add_argument("--kv-cache-memory-gb", type=float, default=1.0)
        g.add_argument("--max-num-seqs", type=int, default=64)
        g.add_argument("--max-num-batched-tokens", type=int, default=2048)
        g.add_argument("--batching", default="continuous", choices=["continuous", "static"])
        g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                       help="reuse the KV of cached prompt prefixes (radix tree; on by default)")
        g.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority", "lpm"])
        g.add_argument("--max-wait-s", type=float, default=60.0,
                       help="a request waiting longer is admitted before newer ones, whatever the policy")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--device", default=EngineArgs.device,
                       help="'auto' (CUDA when a GPU is visible), 'cpu', 'cuda' or 'cuda:N'")
        g.add_argument("--attention-backend", default=EngineArgs.attention_backend,
                       choices=["auto", "cpu", "torch", "triton"])
        g.add_argument("--enforce-eager", action="store_true", help="CUDA: run decode steps without CUDA graphs")
        g.add_argument("--num-threads", type=int, default=None)
        d = parser.add_argument_group("distributed")
        d.add_argument("--tensor-parallel-size", "--tp", type=int, default=1,
                       help="ranks that split each layer (heads, MLP columns, vocabulary)")
        d.add_argument("--pipeline-parallel-size", "--pp", type=int, default=1, help="stages of consecutive layers")
        d.add_argument("--data-parallel-size", "--dp", type=int, default=1, help="engine replicas behind a router")
        d.add_argument("--distributed-backend", default="shm", choices=["shm", "gloo"],
                       help="tensor-parallel collectives on one host: shared memory or gloo on loopback")
        d.add_argument("--router-policy", default="prefix_aware",
                       choices=["round_robin", "least_outstanding", "prefix_aware"],
                       help="which data-parallel replica takes a request")
        d.add_argument("--pipeline-micro-batches", type=int, default=1,
                       help="micro-batches per step with pipeline parallelism (on CPU, smaller matmuls cost "
                            "more per row than the bubble they save; steps in flight fill the pipeline)")
        d.add_argument("--pipeline-virtual-engines", type=int, default=None,
                       help="steps in flight with pipeline parallelism, each with its own scheduler "
                            "(default: one per stage, as vLLM)")
        d.add_argument("--pipeline-stage-layers", type=int_list, default=None, metavar="N,N,...",
                       help="layers of each pipeline stage (default: balanced by cost, the LM head counted "
                            "on stage 0 by its weights)")
        d.add_argument("--nnodes", type=int, default=1, help="hosts (others: python -m pagoda.distributed.node)")
        d.add_argument("--node-rank", type=int, default=0)
        d.add_argument("--master-addr", default=None, help="node 0's address (default: $MASTER_ADDR)")
        d.add_argument("--master-port", type=int, default=None, help="node 0's rendezvous port ($MASTER_PORT)")

    def parallel_config(self):
        """The tensor / pipeline layout, resolved: each rank gets the host's cores shared out."""
        import os

        from pagoda.distributed.parallel_config import ParallelConfig

        ranks = self.tensor_parallel_size * self.pipeline_parallel_size // self.nnodes  # on this host
        threads = self.num_threads or max(1, (os.cpu_count() or 1) // ranks)
        port = self.master_port or (int(os.environ["MASTER_PORT"]) if "MASTER_PORT" in os.environ else None)
        return ParallelConfig(self.tensor_parallel_size, self.pipeline_parallel_size, self.distributed_backend,
                              threads, micro_batches=self.pipeline_micro_batches,
                              virtual_engines=self.pipeline_virtual_engines or self.pipeline_parallel_size,
                              stage_layers=tuple(self.pipeline_stage_layers) if self.pipeline_stage_layers else None,
                              max_step_tokens=self.max_num_batched_tokens, nnodes=self.nnodes,
                              node_rank=self.node_rank,
                              master_addr=self.master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1"),
                              master_port=port)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in vars(args).items() if k in names}
        if kwargs.get("quantization") == "none":
            kwargs["quantization"] = None
        return cls(**kwargs)


def int_list(text: str) -> tuple[int, ...]:
    """"11,19" -> (11, 19)."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
