"""Constrained-decoding throughput: JSON-schema requests vs the same unconstrained, with and without
jump-forward, plus the mean per-token grammar time. One run, one machine: compare the ratios.

    pagoda bench structured [--num-requests 64] [--repeats 3] [--model PATH]

Output tokens/s counts grammar-forced (jump-forward) tokens as output. The unconstrained run gets,
per request, exactly as many tokens as the stepwise constrained one produced (ignore_eos), so the
runs decode the same number of tokens for the same prompts. "mask first" computes every token's
bitmask before the draw (no draw verification), for comparison. The schema has long fixed keys,
where jump-forward saves the most model steps. The runs are interleaved over several rounds and
each is compared with the unconstrained run of its own round (one run on a 2-core host varies by
a few percent from one minute to the next).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from pagoda import LLM, SamplingParams
from pagoda.structured import GuidedDecodingParams, guided_logits_processor

HELP = "constrained-decoding throughput: JSON-schema requests vs unconstrained, jump-forward on and off"


SCHEMA = {
    "type": "object",
    "properties": {
        "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 99999},
        "customer_preferred_contact_method": {"enum": ["email", "telephone", "postal_mail"]},
        "customer_is_currently_subscribed": {"type": "boolean"},
        "customer_full_name": {"type": "string", "maxLength": 24},
        "customer_account_balance_in_euros": {"type": "number"},
        "customer_favourite_product_category": {"enum": ["books", "garden", "kitchen", "toys"]},
    },
    "required": ["customer_identification_number", "customer_preferred_contact_method",
                 "customer_is_currently_subscribed", "customer_full_name",
                 "customer_account_balance_in_euros", "customer_favourite_product_category"],
    "additionalProperties": False,
}


def _run(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> tuple[float, list, int, int]:
    engine = llm.engine
    before = engine.get_stats()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    after = engine.get_stats()
    return (elapsed, [o.outputs[0] for o in outs], after.num_steps - before.num_steps,
            after.jump_forward_tokens_total - before.jump_forward_tokens_total)


@dataclass
class _Config:
    name: str
    jump_forward: bool = False
    mask_first: bool = False
    constrained: bool = True
    seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    steps: int = 0
    forced: int = 0
    note: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all runs, interleaved")
    parser.add_argument("--model", default=None)


def run(args: argparse.Namespace) -> int:
    import jsonschema

    llm = LLM(args.model, show_progress=False, max_num_seqs=max(64, args.num_requests))
    tok = llm.engine.tokenizer
    prompts = [tok.encode(tok.apply_chat_template(
        [{"role": "user", "content": f"Describe customer number {i} of our shop as a JSON record."}],
        tokenize=False), add_special_tokens=False) for i in range(args.num_requests)]
    spec = GuidedDecodingParams(json=json.dumps(SCHEMA, ensure_ascii=False, separators=(",", ":")))
    guided_logits_processor(spec, tok)  # compile (and build the tokenizer tables) before timing
    llm.generate(prompts, SamplingParams(max_tokens=8), use_tqdm=False)  # warm up

    configs = [_Config("json schema, jump-forward", jump_forward=True),
               _Config("json schema, stepwise"),
               _Config("json schema, stepwise, mask first", mask_first=True),
               _Config("unconstrained (same lengths)", constrained=False)]
    outputs: dict[str, list] = {}
    lengths: list[int] = []
    for _ in tqdm(range(args.repeats), desc="rounds", unit="round"):
        for c in configs:
            if c.constrained:
                processors = [guided_logits_processor(spec, tok, jump_forward=c.jump_forward) for _ in prompts]
                # mask first: the processor seen only as a callable (no draw verification, no jump-forward)
                used = [p.__call__ if c.mask_first else p for p in processors]
                params = [SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=i, logits_processors=[p])
                          for i, p in enumerate(used)]
            else:  # as many tokens as the stepwise run produced, for the same prompts
                params = [SamplingParams(max_tokens=n, temperature=0.7, seed=i, ignore_eos=True)
                          for i, n in enumerate(lengths)]
            elapsed, outs, c.steps, c.forced = _run(llm, prompts, params)
            c.seconds.append(elapsed)
            c.tokens = sum(len(o.token_ids) for o in outs)
            outputs[c.name] = outs
            if not c.constrained:
                continue
            if not c.jump_forward and not c.mask_first:
                lengths = [len(o.token_ids) for o in outs]
            valid = 0
            for o in outs:
                if o.finish_reason == "stop":
                    jsonschema.validate(json.loads(o.text), SCHEMA)
                    valid += 1
            grammar_s = sum(p.stats.seconds for p in processors)
            decided = sum(p.stats.num_tokens for p in processors)
            masks = sum(p.stats.num_masks for p in processors)
            c.note = (f"{valid}/{len(outs)} valid, {grammar_s / max(decided, 1) * 1e6:.0f} us/token grammar, "
                      f"{masks / max(decided, 1):.0%} masked")

    free = configs[-1]
    print(f"{args.num_requests} requests, SmolLM2-135M (or --model), schema with long fixed keys; "
          f"{args.repeats} interleaved rounds: median time, and each round's ratio to the unconstrained run "
          "of the same round (median, min-max)")
    print(f"{'run':36} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'vs free':>8} {'range':>11} {'steps':>6} "
          f"{'forced':>7}")
    for c in configs:
        seconds = statistics.median(c.seconds)
        ratios = [(c.tokens / s) / (free.tokens / f) for s, f in zip(c.seconds, free.seconds, strict=True)]
        print(f"{c.name:36} {c.tokens:7d} {seconds:8.2f} {c.tokens / seconds:8.1f} {statistics.median(ratios):8.2f} "
              f"{min(ratios):5.2f}-{max(ratios):4.2f} {c.steps:6d} {c.forced:7d}  {c.note}")
    same = sum(a.token_ids == b.token_ids for a, b in zip(outputs[configs[0].name], outputs[configs[1].name],
                                                         strict=True))
    print(f"jump-forward outputs identical to stepwise: {same}/{len(prompts)} (exact in float32; in bfloat16 the "
          "forced tokens' chunked forward rounds differently from one-token decode steps, so sampled outputs may "
          "drift; the masking policy itself is identical, see tests/structured/test_jump_forward.py)")
    return 0
