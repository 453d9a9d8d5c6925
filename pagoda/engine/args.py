"""User-facing engine options, shared by ``LLM(...)``, ``pagoda generate/chat`` and ``pagoda serve``.

``EngineArgs`` is what users write and the one source of every default: the command-line flags
read their defaults from it (``default=EngineArgs.block_size``), and so do the frozen configs of
``pagoda.config`` and ``ParallelConfig``, which keep each option's name. The engine resolves the
args once into those configs and passes each component only its part. Options are checked here,
once, when the args are made (``ValueError`` naming the option); what depends on the model (heads
that a TP size must divide) is checked by ``ParallelConfig.validate`` when the model is known.

This module imports no torch, so ``pagoda --help`` stays light.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pagoda.spec.config import SpeculativeConfig

# option -> the values it takes (None as a choice is spelt "none" on the command line)
DTYPES = ("auto", "float32", "bfloat16")
QUANTIZATIONS = ("auto", "gguf", "fp8", "w8a8", None)
KV_CACHE_DTYPES = ("auto", "int8", "fp8")
WEIGHTS_MEMORY = ("auto", "packed")
BATCHING = ("continuous", "static")
SCHEDULING_POLICIES = ("fcfs", "priority", "lpm")
DISTRIBUTED_BACKENDS = ("shm", "gloo")
EXECUTOR_BACKENDS = ("mp", "ray")  # who starts the TP/PP ranks: this host's processes, or Ray actors


def _router_policies() -> list[str]:
    from pagoda.distributed.router import ROUTERS

    return ROUTERS.names()


def _attention_backends() -> list[str]:
    from pagoda.attention.registry import ATTENTION_BACKENDS

    return ["auto", *ATTENTION_BACKENDS.names()]


@dataclass
class EngineArgs:
    model: str | None = None  # HF directory or .gguf file; None: the bundled SmolLM2-135M-Instruct
    tokenizer: str | None = None  # defaults to the model's own
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16"
    quantization: str | None = "auto"  # "auto": "gguf" for GGUF files on CPU; "fp8": E4M3; "w8a8": int8; None: dense
    attention_backend: str = "auto"  # "auto" (triton on CUDA, else the C++ CPU kernels) | a registry name
    max_model_len: int | None = None
    block_size: int = 16
    kv_cache_memory_gb: float = 1.0  # KV pool budget
    num_kv_blocks: int | None = None  # overrides the budget (tests use tiny pools)
    kv_cache_dtype: str = "auto"  # "auto" (the model dtype) | "int8" | "fp8": per token and head scales
    # "auto": a packed 4-bit GGUF linear also keeps a bf16 copy where that is faster (prompts, > 16 rows);
    # "packed": only the packed weights, one kernel for every row
    weights_memory: str = "auto"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    batching: str = "continuous"  # "continuous" | "static"
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True  # off: a prompt that exceeds the step's token budget waits for room
    scheduling_policy: str = "fcfs"  # "fcfs" | "priority" | "lpm"
    max_wait_s: float = 60.0  # starvation guard: older waiting requests go first, whatever the policy
    max_preemptions: int = 2  # preempted more often: resumed only when blocks for its whole run are free
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when torch sees a GPU) | "cpu" | "cuda" | "cuda:N"
    enforce_eager: bool = False  # CUDA: no CUDA graphs for decode steps
    # greedy tokens independent of the rest of the batch (fixed-order kernels for every row); off:
    # only the same request repeated is reproducible (README, "Deterministic outputs")
    deterministic: bool = False
    num_threads: int | None = None  # with TP/PP: threads per rank (default: the cores shared out)
    show_progress: bool = True  # a progress bar while loading weights and generating
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
    startup_timeout_s: float = 300.0  # how long ranks wait for each other to start
    # "ray": the TP/PP ranks are Ray actors (a placement group, one bundle per rank) on the nodes of a Ray cluster
    distributed_executor_backend: str = "mp"
    ray_address: str | None = None  # the Ray cluster to join (None: $RAY_ADDRESS, else a local Ray)
    enable_lora: bool = False  # serve PEFT LoRA adapters (LoRARequest per request)
    max_loras: int = 4  # adapters resident at once (slots): the most distinct adapters in one step
    max_lora_rank: int = 64  # adapters of a higher rank are refused at load
    max_cpu_loras: int | None = None  # adapters kept in host memory for swapping in (None: all used so far)
    # speculative decoding, vLLM-shaped: {"method": "ngram", "num_speculative_tokens": 4, ...} (or its JSON)
    speculative_config: dict[str, Any] | str | None = None

    def __post_init__(self) -> None:
        if self.pipeline_stage_layers is not None:
            self.pipeline_stage_layers = tuple(self.pipeline_stage_layers)
        self.validate()

    def validate(self) -> None:
        """Refuses a bad option, naming it; model-dependent checks wait for the model."""
        _choice("dtype", self.dtype, DTYPES)
        _choice("quantization", self.quantization, QUANTIZATIONS)
        _choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES)
        _choice("weights_memory", self.weights_memory, WEIGHTS_MEMORY)
        _choice("attention_backend", self.attention_backend, _attention_backends())
        _choice("batching", self.batching, BATCHING)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):  # whether that GPU exists: at engine start
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _choice("scheduling_policy", self.scheduling_policy, SCHEDULING_POLICIES)
        _choice("distributed_backend", self.distributed_backend, DISTRIBUTED_BACKENDS)
        _choice("distributed_executor_backend", self.distributed_executor_backend, EXECUTOR_BACKENDS)
        _choice("router_policy", self.router_policy, _router_policies())
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "tensor_parallel_size",
                     "pipeline_parallel_size", "data_parallel_size", "pipeline_micro_batches", "nnodes"):
            _at_least(name, getattr(self, name), 1)
        for name in ("max_loras", "max_lora_rank"):
            _at_least(name, getattr(self, name), 1)
        for name in ("max_model_len", "num_kv_blocks", "num_threads", "pipeline_virtual_engines", "max_cpu_loras"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        _at_least("max_wait_s", self.max_wait_s, 0)
        _at_least("max_preemptions", self.max_preemptions, 0)
        _at_least("node_rank", self.node_rank, 0)
        if self.kv_cache_memory_gb <= 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb!r}")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be > 0, got {self.startup_timeout_s!r}")
        ranks = self.tensor_parallel_size * self.pipeline_parallel_size
        if ranks % self.nnodes:
            raise ValueError(f"nnodes: {ranks} ranks cannot be spread evenly over {self.nnodes} hosts")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank must be below nnodes ({self.nnodes}), got {self.node_rank}")
        if self.speculative_config is not None:
            self.resolved_speculative_config()  # with static batching: refused when the engine starts
        if self.pipeline_stage_layers is not None:
            if len(self.pipeline_stage_layers) != self.pipeline_parallel_size:
                raise ValueError(f"pipeline_stage_layers gives {len(self.pipeline_stage_layers)} stage sizes "
                                 f"for pipeline_parallel_size {self.pipeline_parallel_size}")

    def resolved_speculative_config(self) -> SpeculativeConfig | None:
        """The frozen ``SpeculativeConfig`` (ValueError naming the bad field), None when off."""
        from pagoda.spec.config import SpeculativeConfig

        return None if self.speculative_config is None else SpeculativeConfig.from_dict(self.speculative_config)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """The engine's flags: one per field, named after it, with its default."""
        d = EngineArgs  # the defaults
        g = parser.add_argument_group("engine")
        g.add_argument("--model", default=d.model,
                       help="Hugging Face model directory or GGUF file (default: bundled SmolLM2-135M-Instruct)")
        g.add_argument("--tokenizer", default=d.tokenizer, help="tokenizer directory (default: the model's own)")
        g.add_argument("--dtype", default=d.dtype, choices=DTYPES)
        g.add_argument("--quantization", default=d.quantization, type=_none_name, choices=QUANTIZATIONS,
                       metavar="{" + ",".join(_cli_name(q) for q in QUANTIZATIONS) + "}",
                       help="gguf: keep a GGUF's 4-bit / Q8_0 weights packed; fp8: E4M3 weights (CUDA); "
                       "w8a8: int8 weights and activations (CPU, VNNI); none: dense")
        g.add_argument("--attention-backend", default=d.attention_backend, choices=_attention_backends(),
                       help="paged attention implementation (auto: triton on CUDA, else the C++ CPU kernels when built)")
        g.add_argument("--max-model-len", type=int, default=d.max_model_len)
        g.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV cache block")
        g.add_argument("--kv-cache-memory-gb", type=float, default=d.kv_cache_memory_gb)
        g.add_argument("--num-kv-blocks", type=int, default=d.num_kv_blocks,
                       help="KV cache blocks (overrides --kv-cache-memory-gb)")
        g.add_argument("--kv-cache-dtype", default=d.kv_cache_dtype, choices=KV_CACHE_DTYPES,
                       help="auto: the model dtype; int8 / fp8 (E4M3) with a scale per token and head: ~2x the tokens")
        g.add_argument("--weights-memory", default=d.weights_memory, choices=WEIGHTS_MEMORY,
                       help="auto: packed 4-bit GGUF linears also keep a bf16 copy where it is faster (prompts, "
                            "steps of more than 16 rows); packed: only the packed weights (about 0.75 B/weight)")
        g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
        g.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
        g.add_argument("--batching", default=d.batching, choices=BATCHING)
        g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=d.enable_prefix_caching,
                       help="reuse the KV of cached prompt prefixes (radix tree; on by default)")
        g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=d.enable_chunked_prefill,
                       help="split a long prompt over steps within the token budget (on by default)")
        g.add_argument("--scheduling-policy", default=d.scheduling_policy, choices=SCHEDULING_POLICIES)
        g.add_argument("--max-wait-s", type=float, default=d.max_wait_s,
                       help="a request waiting longer is admitted before newer ones, whatever the policy")
        g.add_argument("--max-preemptions", type=int, default=d.max_preemptions,
                       help="a request preempted more often waits until blocks for its whole run are free (no thrash)")
        g.add_argument("--seed", type=int, default=d.seed)
        g.add_argument("--device", default=d.device,
                       help="'auto' (CUDA when a GPU is visible), 'cpu', 'cuda' or 'cuda:N'")
        g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=d.deterministic,
                       help="batch-invariant numerics: a greedy request gives the same tokens whatever else runs "
                            "beside it (slower at large batches; off: the same request repeated is reproducible)")
        g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=d.enforce_eager,
                       help="CUDA: run decode steps without CUDA graphs")
        g.add_argument("--num-threads", type=int, default=d.num_threads)
        g.add_argument("--speculative-config", default=d.speculative_config, metavar="JSON",
                       help='speculative decoding, e.g. \'{"method": "ngram", "num_speculative_tokens": 4, '
                            '"prompt_lookup_min": 2, "prompt_lookup_max": 4}\' or \'{"method": "draft_model", '
                            '"model": PATH, "num_speculative_tokens": 3}\' (a self-draft: "draft_num_layers": N '
                            'instead of "model")')
        g.add_argument("--show-progress", action=argparse.BooleanOptionalAction, default=d.show_progress,
                       help="progress bars while loading and generating")
        p = parser.add_argument_group("distributed")
        p.add_argument("--tensor-parallel-size", "--tp", type=int, default=d.tensor_parallel_size,
                       help="ranks that split each layer (heads, MLP columns, vocabulary)")
        p.add_argument("--pipeline-parallel-size", "--pp", type=int, default=d.pipeline_parallel_size,
                       help="stages of consecutive layers")
        p.add_argument("--data-parallel-size", "--dp", type=int, default=d.data_parallel_size,
                       help="engine replicas behind a router")
        p.add_argument("--distributed-backend", default=d.distributed_backend, choices=DISTRIBUTED_BACKENDS,
                       help="tensor-parallel collectives on one host: shared memory or gloo on loopback")
        p.add_argument("--router-policy", default=d.router_policy, choices=_router_policies(),
                       help="which data-parallel replica takes a request")
        p.add_argument("--pipeline-micro-batches", type=int, default=d.pipeline_micro_batches,
                       help="micro-batches per step with pipeline parallelism (on CPU, smaller matmuls cost "
                            "more per row than the bubble they save; steps in flight fill the pipeline)")
        p.add_argument("--pipeline-virtual-engines", type=int, default=d.pipeline_virtual_engines,
                       help="steps in flight with pipeline parallelism, each with its own scheduler "
                            "(default: one per stage, as vLLM)")
        p.add_argument("--pipeline-stage-layers", type=int_list, default=d.pipeline_stage_layers,
                       metavar="N,N,...",
                       help="layers of each pipeline stage (default: balanced by cost, the LM head counted "
                            "on stage 0 by its weights)")
        p.add_argument("--nnodes", type=int, default=d.nnodes,
                       help="hosts (others: python -m pagoda.distributed.node)")
        p.add_argument("--node-rank", type=int, default=d.node_rank)
        p.add_argument("--master-addr", default=d.master_addr, help="node 0's address (default: $MASTER_ADDR)")
        p.add_argument("--master-port", type=int, default=d.master_port,
                       help="node 0's rendezvous port ($MASTER_PORT)")
        p.add_argument("--startup-timeout-s", type=float, default=d.startup_timeout_s,
                       help="how long ranks wait for each other to start")
        p.add_argument("--distributed-executor-backend", default=d.distributed_executor_backend,
                       choices=EXECUTOR_BACKENDS,
                       help="mp: the TP/PP ranks are processes of this host (or of hosts started by hand, "
                            "--nnodes); ray: Ray actors placed on the nodes of a Ray cluster "
                            "(pip install 'pagoda[ray]')")
        p.add_argument("--ray-address", default=d.ray_address,
                       help="the Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started on loopback)")

        lo = parser.add_argument_group("LoRA")
        lo.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=d.enable_lora,
                        help="serve PEFT LoRA adapters on the base model")
        lo.add_argument("--max-loras", type=int, default=d.max_loras,
                        help="adapters resident at once (the most distinct adapters in one step)")
        lo.add_argument("--max-lora-rank", type=int, default=d.max_lora_rank, help="highest adapter rank accepted")
        lo.add_argument("--max-cpu-loras", type=int, default=d.max_cpu_loras,
                        help="adapters kept in host memory for swapping in (default: every one used)")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})


def _choice(name: str, value: Any, choices: Any) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _at_least(name: str, value: Any, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        raise ValueError(f"{name} must be a number >= {low}, got {value!r}")


def _cli_name(value: str | None) -> str:
    return "none" if value is None else value


def _none_name(text: str) -> str | None:
    return None if text == "none" else text


def int_list(text: str) -> tuple[int, ...]:
    """"11,19" -> (11, 19)."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
