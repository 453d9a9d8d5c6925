"""`pagoda bench serve`: load-test any OpenAI-compatible server and report vLLM-style serving metrics.

Example::

    pagoda serve &                       # or any other OpenAI-compatible server
    pagoda bench serve --url http://127.0.0.1:8000 --workload sharegpt --num-prompts 200 \\
        --request-rate 4 --result-json bench.json --plot bench.png
"""

from __future__ import annotations

import argparse
import math

HELP = "load-test an OpenAI-compatible server: TTFT, TPOT, ITL, E2E, throughput, goodput"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("target")
    g.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (with or without /v1)")
    g.add_argument("--endpoint", default="completions", choices=["completions", "chat"])
    g.add_argument("--model", default=None, help="model name (default: the first one /v1/models lists)")
    g.add_argument("--api-key", default=None)
    g.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="ask for exactly max_tokens tokens (a vLLM/Pagoda extension; --no-ignore-eos for "
                        "servers that reject it)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    w = parser.add_argument_group("workload (synthetic, seeded)")
    w.add_argument("--workload", default="sharegpt", choices=["sharegpt", "random", "shared-prefix"],
                   help="sharegpt: ShareGPT-like length mix; random: lengths around --input-len/--output-len; "
                        "shared-prefix: groups sharing a long system prompt")
    w.add_argument("--num-prompts", type=int, default=200)
    w.add_argument("--input-len", type=int, default=128, help="random: prompt tokens")
    w.add_argument("--output-len", type=int, default=128, help="random and shared-prefix: tokens to generate")
    w.add_argument("--range-ratio", type=float, default=0.0, help="random: lengths vary by +- this fraction")
    w.add_argument("--max-input-len", type=int, default=1024, help="sharegpt: clip prompt lengths")
    w.add_argument("--max-output-len", type=int, default=512, help="sharegpt: clip output lengths")
    w.add_argument("--num-groups", type=int, default=4, help="shared-prefix: distinct system prompts")
    w.add_argument("--system-prompt-len", type=int, default=512, help="shared-prefix: shared tokens")
    w.add_argument("--question-len", type=int, default=32, help="shared-prefix: per-prompt tokens")
    w.add_argument("--seed", type=int, default=0)
    t = parser.add_argument_group("traffic")
    t.add_argument("--request-rate", type=float, default=math.inf,
                   help="Poisson arrivals per second (default inf: all at once)")
    t.add_argument("--max-concurrency", type=int, default=None, help="at most this many requests in flight")
    t.add_argument("--num-warmups", type=int, default=1, help="requests sent (and not counted) first")
    o = parser.add_argument_group("output")
    o.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS",
                   help="SLOs for goodput, e.g. ttft:500 tpot:50 e2el:10000")
    o.add_argument("--result-json", default=None, help="write metrics and per-request results here")
    o.add_argument("--plot", default=None, help="write a PNG summary here")
    o.add_argument("--label", default="", help="a title for the table and plot")


def build_workload(args: argparse.Namespace) -> list:
    from pagoda.bench import workloads

    if args.workload == "random":
        return workloads.random_workload(args.num_prompts, args.input_len, args.output_len, args.range_ratio,
                                         args.seed)
    if args.workload == "shared-prefix":
        per_group = max(1, args.num_prompts // args.num_groups)
        return workloads.shared_prefix_workload(args.num_groups, per_group, args.system_prompt_len,
                                                args.question_len, args.output_len, args.seed)
    return workloads.sharegpt_like_workload(args.num_prompts, args.max_input_len, args.max_output_len, args.seed)


async def _main(args: argparse.Namespace) -> int:
    import datetime
    import json
    from dataclasses import asdict, replace

    import httpx

    from pagoda.bench.load_generator import run_load
    from pagoda.bench.metrics import compute_metrics, format_table, parse_slos
    from pagoda.bench.openai_request import Endpoint, send_request
    from pagoda.bench.plot import plot_results

    slos = parse_slos(args.goodput)
    requests = build_workload(args)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits, headers=headers) as http:
        ep = Endpoint(args.url, args.model or "", args.endpoint, args.api_key, args.ignore_eos, args.temperature)
        if not args.model:
            resp = await http.get(ep.v1 + "/models")
            resp.raise_for_status()
            ep = replace(ep, model=resp.json()["data"][0]["id"])
        print(f"benchmarking {ep.url} (model {ep.model}): {len(requests)} {args.workload} requests, "
              f"rate {args.request_rate}/s, max concurrency {args.max_concurrency or 'unbounded'}")
        for req in requests[: args.num_warmups]:
            warm = await send_request(http, ep, replace(req, output_len=min(req.output_len, 8)))
            if not warm.success:
                print(f"warm-up request failed: {warm.error}")
                return 1
        done = 0

        def progress(_: object) -> None:
            nonlocal done
            done += 1
            if done % max(1, len(requests) // 10) == 0 or done == len(requests):
                print(f"  {done}/{len(requests)} done", flush=True)

        results, duration = await run_load(requests, lambda r: send_request(http, ep, r), args.request_rate,
                                           args.max_concurrency, args.seed, progress)
    metrics = compute_metrics(results, duration, slos)
    title = args.label or f"pagoda bench serve: {args.workload}, rate {args.request_rate}"
    print(format_table(metrics, title))
    errors = sorted({r.error for r in results if not r.success})
    for e in errors[:5]:
        print(f"error: {e}")
    if args.result_json:
        record = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "url": ep.url, "model": ep.model, "endpoint": args.endpoint, "workload": args.workload,
            "num_prompts": len(requests), "request_rate": args.request_rate if math.isfinite(args.request_rate)
            else "inf", "max_concurrency": args.max_concurrency, "seed": args.seed, "slos_ms": slos,
            "metrics": metrics.to_dict(),
            "requests": [{k: v for k, v in asdict(r).items() if k != "text"} for r in results],
        }
        with open(args.result_json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.result_json}")
    if args.plot:
        plot_results(results, metrics, args.plot, title)
        print(f"wrote {args.plot}")
    return 0 if metrics.failed == 0 else 2


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_main(args))
