"""GGUF K-quant linears against the dequantized bfloat16 linear, one layer shape, interleaved rounds.

    python -m pagoda.bench.kquant_bench                       # 576 x 1536 (the bundled model's ffn_down), 1 and 64 rows
    python -m pagoda.bench.kquant_bench --requantize OUT.gguf # the bundled GGUF with every ffn_down as Q6_K

Each variant is the layer the loader builds for that block type (bfloat16 activations): Q4_K on ``Int4Linear``
(``invariant_linear``, and torch's int4 kernel as the default mode runs generated rows), Q5_K / Q6_K on
``KQuantLinear`` (``kquant_linear``), against the same weights dequantized to bfloat16 through oneDNN
(``pagoda.layers.prepacked.linear``). Prints the median time per call and its range over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from pagoda.layers.linear import ColumnParallelLinear
from pagoda.layers.prepacked import linear, prepack_weight
from pagoda.quantization.gguf_int4 import Int4Linear
from pagoda.quantization.gguf_kquant import KQuantLinear, sub_block
from pagoda.quantization.kquant_quantizer import quantize_q4_k, quantize_q6_k


def _q5_k_blocks(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random Q5_K blocks with small super-block scales (there is no Q5_K quantizer here; speed only)."""
    blocks = rng.integers(0, 256, (rows * cols // 256, 176), dtype=np.uint8)
    for at in (0, 2):
        blocks[:, at:at + 2] = (rng.random((len(blocks), 1)) * 1e-3).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def layers(out_features: int, in_features: int, seed: int = 0) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_features, in_features)) * 0.05).astype(np.float32)
    shape = (out_features, in_features)
    made: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    dense = torch.from_numpy(w).to(torch.bfloat16)
    packed = prepack_weight(dense)
    made["bf16 dense (oneDNN)"] = lambda x: linear(x, dense, None, packed)
    for kind, data in ((Q.Q4_K, quantize_q4_k(w)), (Q.Q6_K, quantize_q6_k(w)),
                       (Q.Q5_K, _q5_k_blocks(out_features, in_features, rng))):
        if kind == Q.Q4_K:
            for name, deterministic in (("Q4_K invariant_linear", True), ("Q4_K default", False)):
                layer = Int4Linear(ColumnParallelLinear(in_features, out_features), torch.bfloat16, deterministic)
                layer.load_quantized(kind, data, shape, None)
                layer.finalize()
                made[name] = layer._generated if not deterministic else layer  # generated rows: int4 <= 16
        else:
            kq = KQuantLinear(ColumnParallelLinear(in_features, out_features), sub_block(kind))
            kq.load_quantized(kind, data, shape, None)
            kq.finalize()
            made[f"{kind.name} kquant_linear"] = kq
    return made


def time_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seconds: float) -> float:
    fn(x)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(x)
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-features", type=int, default=576)
    p.add_argument("--in-features", type=int, default=1536)
    p.add_argument("--rows", type=int, nargs="*", default=[1, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.3, help="per variant and round")
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--requantize", metavar="OUT", help="write the bundled GGUF with every ffn_down as Q6_K, and exit")
    args = p.parse_args()
    if args.requantize:
        from pagoda.quantization.kquant_quantizer import requantize_gguf
        from pagoda.weights.default_model import default_model_path

        n = requantize_gguf(default_model_path(), args.requantize,
                            lambda name, shape: Q.Q6_K if name.endswith("ffn_down.weight") else None)
        print(f"wrote {args.requantize}: {n} matrices requantized to Q6_K")
        return
    torch.set_num_threads(args.num_threads)
    made = layers(args.out_features, args.in_features)
    print(f"{args.out_features} x {args.in_features}, bf16 activations, {args.num_threads} threads, "
          f"{args.rounds} interleaved rounds of {args.seconds} s per variant")
    for m in args.rows:
        x = torch.randn(m, args.in_features, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
        times: dict[str, list[float]] = {name: [] for name in made}
        for _ in range(args.rounds):
            for name, fn in made.items():
                times[name].append(time_call(fn, x, args.seconds))
        base = statistics.median(times["bf16 dense (oneDNN)"])
        print(f"\nrows = {m}")
        print("| variant | median us | range us | vs bf16 |\n| --- | --- | --- | --- |")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {med * 1e6:.1f} | {min(ts) * 1e6:.1f}-{max(ts) * 1e6:.1f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
