"""Layout planner maths: memory per device and a ranked list of TP x PP x DP layouts.

The rules (the brief's "how to choose", made precise):

1. A layout must fit: each device holds its share of the weights (1/TP of each layer, 1/PP of
   the layers, the vocabulary ends on the end stages) plus a runtime reserve, and what is left
   must hold at least ``min_kv_tokens`` of KV cache per replica.
2. TP stays within a host (its all-reduce runs twice a layer) and must divide the heads.
3. PP is for crossing hosts: on one host it only adds pipeline bubbles, so a layout that
   pipelines inside a host ranks after every one that does not.
4. Then the smallest replica that fits wins, because the devices left over become DP replicas
   (more throughput), and among replicas of one size, fewer pipeline stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5625}  # int4: + fp16 scale / 32


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    params: float | None = None  # nominal count (the brief's table); None: counted from the shape

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def layer_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attn = h * (self.num_heads + 2 * self.num_kv_heads) * d + self.num_heads * d * h
        return attn + 3 * h * self.intermediate_size + 2 * h

    @property
    def vocab_params(self) -> int:
        """One embedding matrix (the LM head is another unless tied)."""
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> float:
        if self.params is not None:
            return self.params
        ends = self.vocab_params * (1 if self.tie_word_embeddings else 2) + self.hidden_size
        return self.num_layers * self.layer_params + ends


# shapes of the brief's models (Llama 2 7B / 70B, GPT-3 175B), with their nominal parameter counts
PRESETS: dict[str, ModelShape] = {
    "llama-7b": ModelShape("LLaMA-7B", 32, 4096, 32, 32, 11008, 32000, params=7e9),
    "llama-70b": ModelShape("LLaMA-70B", 80, 8192, 64, 8, 28672, 32000, params=70e9),
    "gpt3-175b": ModelShape("GPT-3 175B", 96, 12288, 96, 96, 49152, 50257, params=175e9),
}


@dataclass(frozen=True)
class Cluster:
    hosts: int = 1
    devices_per_host: int = 8
    memory_gb: float = 80.0  # per device, 1e9 bytes
    interconnect: str = "nvlink"  # within a host: "nvlink" | "pcie"; across hosts the network
    reserve: float = 0.10  # of each device's memory: activations, runtime, fragmentation

    @property
    def num_devices(self) -> int:
        return self.hosts * self.devices_per_host


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    weights_gb: float  # per device (the fullest stage)
    kv_gb: float  # per device, what is left for the KV cache
    kv_tokens: int  # per replica
    fits: bool
    rule: str  # why it ranks where it does

    @property
    def name(self) -> str:
        return " x ".join(f"{k} {v}" for k, v in (("TP", self.tp), ("PP", self.pp), ("DP", self.dp)) if v > 1) \
            or "1 device"


def weight_bytes(shape: ModelShape, dtype: str) -> float:
    return shape.num_params * DTYPE_BYTES[dtype]


def kv_bytes_per_token(shape: ModelShape, kv_dtype_bytes: float = 2.0) -> float:
    """Keys and values of every layer for one token (the whole model, unsharded)."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * kv_dtype_bytes


def stage_weight_bytes(shape: ModelShape, dtype: str, tp: int, pp: int) -> float:
    """Bytes on one device of the fullest stage: its layers and a vocabulary end, sharded by TP."""
    per_param = DTYPE_BYTES[dtype]
    if shape.params is not None:  # nominal count: spread the ends proportionally
        layer = (shape.params - 2 * shape.vocab_params) / shape.num_layers
    else:
        layer = shape.layer_params
    layers = math.ceil(shape.num_layers / pp)
    ends = shape.vocab_params * (2 if pp == 1 and not shape.tie_word_embeddings else 1)
    return (layers * layer + ends) * per_param / tp


def tp_divides(shape: ModelShape, tp: int) -> bool:
    kv = shape.num_kv_heads
    return shape.num_heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)


def evaluate(shape: ModelShape, cluster: Cluster, dtype: str, tp: int, pp: int, min_kv_tokens: int) -> Layout:
    dp = cluster.num_devices // (tp * pp)
    usable = cluster.memory_gb * 1e9 * (1 - cluster.reserve)
    weights = stage_weight_bytes(shape, dtype, tp, pp)
    free = usable - weights
    kv_heads = shape.num_kv_heads // tp if shape.num_kv_heads >= tp else 1
    per_token = 2 * math.ceil(shape.num_layers / pp) * kv_heads * shape.head_dim * 2.0  # 16-bit KV
    tokens = max(0, int(free // per_token))
    fits = free > 0 and tokens >= min_kv_tokens
    if free <= 0:
        rule = f"weights need {weights / 1e9:.1f} GB per device of {usable / 1e9:.1f} GB usable"
    elif not fits:
        rule = f"fits the weights but leaves KV room for {tokens:,} tokens (< {min_kv_tokens:,})"
    elif tp > cluster.devices_per_host:
        rule = "TP crosses hosts: its per-layer all-reduce would run over the network"
    elif pp > 1 and tp * pp <= cluster.devices_per_host:
        rule = "pipelines inside one host: bubbles and no memory gain over TP on the same devices"
    elif pp > 1:
        rule = f"PP across hosts ({pp} stages), TP {tp} within each host"
    elif dp > 1:
        rule = f"the smallest TP that fits with KV room; the other devices make {dp} replicas"
    else:
        rule = "fits on these devices with KV room"
    return Layout(tp, pp, dp, weights / 1e9, max(free, 0) / 1e9, tokens, fits, rule)


def plan(shape: ModelShape, cluster: Cluster, dtype: str = "fp16", min_kv_tokens: int = 32768) -> list[Layout]:
    """Every TP x PP x DP layout using all devices, best first (see the module's rules)."""
    n = cluster.num_devices
    layouts = []
    for tp in range(1, n + 1):
        if n % tp or not tp_divides(shape, tp):
            continue
        for pp in range(1, n // tp + 1):
            if (n // tp) % pp or pp > shape.num_layers:
                continue
            layouts.append(evaluate(shape, cluster, dtype, tp, pp, min_kv_tokens))

    def key(layout: Layout) -> tuple:
        crosses = layout.tp > cluster.devices_per_host
        pp_in_host = layout.pp > 1 and layout.tp * layout.pp <= cluster.devices_per_host
        return (not layout.fits, crosses, pp_in_host, layout.tp * layout.pp, layout.pp)

    ranked = sorted(layouts, key=key)
    if ranked and ranked[0].fits:  # say why a layout that fits ranks after the first
        best = ranked[0]
        ranked = [best] + [_versus(layout, best) if layout.fits and key(layout)[:3] == key(best)[:3] else layout
                           for layout in ranked[1:]]
    return ranked


def _versus(layout: Layout, best: Layout) -> Layout:
    if layout.tp * layout.pp > best.tp * best.pp:
        why = (f"fits, but {best.name} already does on {best.tp * best.pp} devices: this one has "
               f"{layout.dp} replica{'s' if layout.dp > 1 else ''} instead of {best.dp}"
               + (f" and a {layout.tp}-way all-reduce" if layout.tp > best.tp else ""))
    else:
        why = f"same replica size as {best.name}, more pipeline stages"
    return replace(layout, rule=why)


def memory_table(dtypes: tuple[str, ...] = ("fp16", "int8")) -> list[tuple[str, list[float]]]:
    """The brief's table: weights alone, in GB, for each preset model."""
    return [(s.name, [weight_bytes(s, d) / 1e9 for d in dtypes]) for s in PRESETS.values()]
