"""`pagoda bench quality`: what each quantization costs in model quality, on a held text.

For every setting (weights format x KV cache dtype) the text's tokens go through the model as prompts of
``--window`` tokens; each position's log-probability of the true next token gives the perplexity, and its top-1
token is compared with the float32 model's at the same position (top-1 agreement). The text is the English
prose of the product brief (``/work/shared/reference/product-brief.txt``; code blocks and Chinese articles
left out) unless ``--text`` names another file.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import time
from dataclasses import dataclass

HELP = "perplexity and top-1 agreement with the float32 model for each quantization and KV cache dtype"

DEFAULT_TEXT = "/work/shared/reference/product-brief.txt"


@dataclass(frozen=True)
class Setting:
    """One column of the table: how the engine is built."""

    name: str
    dtype: str
    quantization: str | None
    kv_cache_dtype: str = "auto"


SETTINGS = {
    "float32": Setting("float32", "float32", None),
    "bf16": Setting("bf16", "bfloat16", None),
    "gguf": Setting("gguf", "bfloat16", "gguf"),
    "w8a8": Setting("w8a8", "bfloat16", "w8a8"),
    "fp8": Setting("fp8", "bfloat16", "fp8"),
    "bf16+kv-int8": Setting("bf16+kv-int8", "bfloat16", None, "int8"),
    "bf16+kv-fp8": Setting("bf16+kv-fp8", "bfloat16", None, "fp8"),
    "w8a8+kv-int8": Setting("w8a8+kv-int8", "bfloat16", "w8a8", "int8"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF directory or .gguf (default: the bundled model)")
    parser.add_argument("--settings", nargs="*", default=["bf16", "gguf", "w8a8"], choices=sorted(SETTINGS),
                        help="settings to measure against float32 (always measured first)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="a UTF-8 text file (default: the product brief)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens of the text to score")
    parser.add_argument("--window", type=int, default=256, help="tokens per prompt")
    parser.add_argument("--num-threads", type=int, default=2)


def english_prose(text: str) -> str:
    """Paragraphs with no CJK characters, outside code fences, joined by blank lines."""
    kept, in_code = [], False
    for paragraph in re.split(r"\n\s*\n", text):
        lines = []
        for line in paragraph.splitlines():
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                lines.append(line)
        block = "\n".join(lines).strip()
        if len(block) > 40 and not re.search(r"[\u3000-\u9fff\uff00-\uffef]", block):
            kept.append(block)
    return "\n\n".join(kept)


@dataclass
class Scores:
    nll: list[float]
    top1: list[int]

    @property
    def perplexity(self) -> float:
        return math.exp(sum(self.nll) / len(self.nll))


def score(llm, windows: list[list[int]]) -> Scores:
    """Negative log-likelihood of each next token and the model's top-1 token at each position."""
    from pagoda import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    nll, top1 = [], []
    for out in llm.generate(windows, params, use_tqdm=False):
        for entry, token in zip(out.prompt_logprobs[1:], out.prompt_token_ids[1:], strict=True):
            nll.append(-entry[token].logprob)
            top1.append(next(t for t, lp in entry.items() if lp.rank == 1))
    return Scores(nll, top1)


def run(args: argparse.Namespace) -> int:
    import torch

    from pagoda import LLM
    from pagoda.weights.default_model import default_model_path

    torch.set_num_threads(args.num_threads)
    model = args.model or default_model_path()
    with open(args.text, encoding="utf-8") as f:
        text = english_prose(f.read()) if args.text == DEFAULT_TEXT else f.read()
    results: dict[str, Scores] = {}
    windows: list[list[int]] = []
    for name in ["float32", *[s for s in args.settings if s != "float32"]]:
        setting = SETTINGS[name]
        started = time.perf_counter()
        try:
            kv = {} if setting.kv_cache_dtype == "auto" else {"kv_cache_dtype": setting.kv_cache_dtype}
            llm = LLM(model, dtype=setting.dtype, quantization=setting.quantization, num_threads=args.num_threads,
                      show_progress=False, **kv)
        except (ValueError, TypeError) as exc:
            print(f"{name}: n/a ({exc})")
            continue
        if not windows:
            ids = llm.get_tokenizer().encode(text, add_special_tokens=False)[: args.max_tokens]
            windows = [ids[i:i + args.window] for i in range(0, len(ids), args.window) if len(ids) - i > 1]
        results[name] = score(llm, windows)
        print(f"{name}: scored {len(results[name].nll)} tokens in {time.perf_counter() - started:.0f} s", flush=True)
        del llm
        gc.collect()
    base = results["float32"]
    print(f"\n{os.path.basename(os.path.normpath(model))}, {len(base.nll)} scored tokens of {args.text} "
          f"(windows of {args.window})")
    print(f"{'setting':<14} {'perplexity':>10} {'vs float32':>10} {'vs bf16':>8} {'top-1 agree':>11}")
    for name, s in results.items():
        agree = sum(a == b for a, b in zip(s.top1, base.top1, strict=True)) / len(base.top1)
        vs_bf16 = f"{100 * (s.perplexity / results['bf16'].perplexity - 1):+.2f}%" if "bf16" in results else "-"
        print(f"{name:<14} {s.perplexity:>10.3f} {100 * (s.perplexity / base.perplexity - 1):>+9.2f}% "
              f"{vs_bf16:>8} {100 * agree:>10.2f}%")
    return 0
