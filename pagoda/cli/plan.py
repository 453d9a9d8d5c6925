"""`pagoda plan`: memory per device and a ranked list of TP x PP x DP layouts for a model and a cluster."""

from __future__ import annotations

import argparse
import sys

HELP = "Choose a parallel layout: memory per device, KV capacity, ranked TP x PP x DP layouts with the rule"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model (one of)")
    m.add_argument("--model", default=None,
                   help="a Hugging Face directory, a .gguf file, or a preset: llama-7b, llama-70b, gpt3-175b "
                        "(default: the bundled model)")
    m.add_argument("--params", default=None, help="a parameter count (70B, 7e9) with the shape options below")
    m.add_argument("--layers", type=int)
    m.add_argument("--hidden", type=int)
    m.add_argument("--heads", type=int)
    m.add_argument("--kv-heads", type=int)
    m.add_argument("--intermediate", type=int)
    m.add_argument("--vocab", type=int, default=32000)
    c = parser.add_argument_group("cluster")
    c.add_argument("--hosts", type=int, default=1)
    c.add_argument("--devices-per-host", type=int, default=8)
    c.add_argument("--memory-gb", type=float, default=80.0, help="memory per device (GB)")
    c.add_argument("--interconnect", default="nvlink", choices=["nvlink", "pcie"], help="within a host")
    c.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16", "int8", "int4"],
                   help="weight dtype (the KV cache stays 16-bit)")
    c.add_argument("--reserve", type=float, default=0.10, help="share of each device kept for activations")
    c.add_argument("--min-kv-tokens", type=int, default=32768, help="KV capacity a replica must have")
    parser.add_argument("--top", type=int, default=10, help="layouts to list")
    parser.add_argument("--memory-table", action="store_true",
                        help="print the brief's table (7B / 70B / 175B weights in FP16 and INT8) and exit")


def _count(text: str) -> float:
    text = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(text[-1:], 1.0)
    return float(text[:-1] if scale != 1.0 else text) * scale


def resolve_shape(args: argparse.Namespace):
    from pagoda.distributed.planner import PRESETS, ModelShape

    if args.params is not None:
        shape_given = [args.layers, args.hidden, args.heads]
        if None in shape_given:
            raise ValueError("--params needs --layers, --hidden and --heads (for the KV cache and TP sizes)")
        return ModelShape(f"{args.params} model", args.layers, args.hidden, args.heads, args.kv_heads or args.heads,
                          args.intermediate or 4 * args.hidden, args.vocab, params=_count(args.params))
    if args.model in PRESETS:
        return PRESETS[args.model]
    from pagoda.weights.model_loader import ModelFiles

    if args.model is None:
        from pagoda.weights.default_model import default_model_path

        args.model = default_model_path()
    files = ModelFiles(args.model)
    cfg = files.hf_config()
    heads = cfg["num_attention_heads"]
    return ModelShape(files.name, cfg["num_hidden_layers"], cfg["hidden_size"], heads,
                      cfg.get("num_key_value_heads") or heads, cfg["intermediate_size"], cfg["vocab_size"],
                      bool(cfg.get("tie_word_embeddings", False)))


def run(args: argparse.Namespace) -> int:
    from pagoda.distributed.planner import Cluster, kv_bytes_per_token, memory_table, plan, weight_bytes

    if args.memory_table:
        print(f"{'model':<12} {'FP16':>9} {'INT8':>9}")
        for name, (fp16, int8) in memory_table():
            print(f"{name:<12} {fp16:>6.0f} GB {int8:>6.0f} GB")
        return 0
    try:
        shape = resolve_shape(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cluster = Cluster(args.hosts, args.devices_per_host, args.memory_gb, args.interconnect, args.reserve)
    print(f"model    {shape.name}: {shape.num_params / 1e9:.2f}B parameters, {shape.num_layers} layers, hidden "
          f"{shape.hidden_size}, {shape.num_heads} query / {shape.num_kv_heads} KV heads")
    print(f"weights  {weight_bytes(shape, args.dtype) / 1e9:.1f} GB in {args.dtype}; KV cache "
          f"{kv_bytes_per_token(shape) / 1024:.0f} KiB per token (16-bit)")
    print(f"cluster  {cluster.hosts} host(s) x {cluster.devices_per_host} devices x {cluster.memory_gb:g} GB "
          f"({cluster.interconnect}), {cluster.reserve:.0%} of each kept for activations; replicas need "
          f"{args.min_kv_tokens:,} KV tokens")
    layouts = plan(shape, cluster, args.dtype, args.min_kv_tokens)
    if not layouts:
        print("no layout: no TP size divides the heads and the devices")
        return 1
    print()
    print(f"{'#':>2}  {'layout':<20} {'weights/dev':>11} {'KV/dev':>9} {'KV tokens/replica':>17}  rule")
    for i, layout in enumerate(layouts[:args.top], start=1):
        mark = "" if layout.fits else "(does not fit) "
        print(f"{i:>2}  {layout.name:<20} {layout.weights_gb:>8.1f} GB {layout.kv_gb:>6.1f} GB "
              f"{layout.kv_tokens:>17,}  {mark}{layout.rule}")
    best = layouts[0]
    print()
    if best.fits:
        print(f"choice: {best.name} — {best.rule}")
        return 0
    print("choice: none fits; add devices, memory, or a smaller dtype")
    return 1
