"""The cost of the actor hop: `pagoda serve --dp 2` with its replicas as local processes vs as Ray actors.

Starts both servers (the bundled model unless --model; the Ray one starts its own local Ray on loopback
127.0.0.2), then runs interleaved rounds of `pagoda bench serve` against them, alternating the order
(mp, ray / ray, mp, ...), so that both see the same machine. Prints each round and the medians.

    flock /tmp/pagoda-bench.lock python -m pagoda.bench.ray_data_parallel --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from pagoda.bench.serve_round import add_round_args, bench_round, start_server, wait_healthy

BACKENDS = ("mp", "ray")


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} (range {min(values):.1f}-{max(values):.1f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each backend")
    p.add_argument("--port", type=int, default=8770, help="the mp server's port; the Ray one listens on the next")
    p.add_argument("--model", default=None)
    add_round_args(p)
    args = p.parse_args()

    urls = {b: f"http://127.0.0.1:{args.port + i}" for i, b in enumerate(BACKENDS)}
    servers: dict[str, subprocess.Popen] = {}
    try:
        for i, b in enumerate(BACKENDS):
            servers[b] = start_server(args.port + i, args.model, "--data-parallel-size", "2",
                                      "--data-parallel-backend", b, "--no-web-ui")
        for b in BACKENDS:
            wait_healthy(servers[b], urls[b])
        rows: dict[str, list[dict]] = {b: [] for b in BACKENDS}
        with tempfile.TemporaryDirectory() as tmp:
            for b in BACKENDS:
                bench_round(args, urls[b], os.path.join(tmp, f"warm-{b}.json"))  # warm-up, not counted
            for r in range(args.rounds):
                for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
                    m = bench_round(args, urls[b], os.path.join(tmp, f"{b}{r}.json"))
                    row = {"round": r, "tok_s": m["output_throughput"], "tpot_ms": m["tpot_ms"]["median"],
                           "ttft_ms": m["ttft_ms"]["median"]}
                    rows[b].append(row)
                    print(b, json.dumps(row), flush=True)
        tok = {b: [r["tok_s"] for r in rows[b]] for b in BACKENDS}
        for b in BACKENDS:
            print(f"{b:>3}: output tok/s {summary(tok[b])}; median TPOT ms "
                  f"{statistics.median(r['tpot_ms'] for r in rows[b]):.1f}, TTFT ms "
                  f"{statistics.median(r['ttft_ms'] for r in rows[b]):.1f}")
        ratios = [a / b for a, b in zip(tok["ray"], tok["mp"])]
        print(f"ray / mp output tok/s: median of medians {statistics.median(tok['ray']) / statistics.median(tok['mp']):.3f}"
              f"; per round {', '.join(f'{x:.3f}' for x in ratios)}")
    finally:
        for s in servers.values():
            s.terminate()
        for s in servers.values():
            try:
                s.wait(60)
            except subprocess.TimeoutExpired:
                s.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
