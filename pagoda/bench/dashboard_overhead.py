"""The live dashboard's cost to the engine: `pagoda bench serve` with the dashboard open vs closed.

Starts one `pagoda serve` (the bundled model unless --model), then runs interleaved rounds of
`pagoda bench serve` against it, alternating the order (closed, open / open, closed, ...). In an
"open" round a reader holds /dashboard/stream, exactly as the page does (the engine's work is the
same whether a browser or this reader consumes the stream); it records what the engine itself
measured: time spent feeding the dashboard (per-step records + snapshots) over time spent in
``engine.step()``. After each open round the script waits until the engine's feed has closed.

    flock /tmp/pagoda-bench.lock python -m pagoda.bench.dashboard_overhead --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import httpx

from pagoda.bench.serve_round import add_round_args, bench_round, start_server, wait_healthy
from pagoda.server.dashboard_feed import WATCH_TIMEOUT_S


class StreamReader(threading.Thread):
    """Reads the dashboard stream until stopped; keeps the engine's own cost figures."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.frames = 0
        self.snapshot_ms: list[float] = []
        self.last_cost: dict | None = None
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        with httpx.stream("GET", self.url + "/dashboard/stream", timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    frame = json.loads(line[6:])
                    if "replicas" in frame:
                        self.frames += 1
                        cost = frame["replicas"][0]["cost"]
                        self.snapshot_ms.append(cost["snapshot_ms"])
                        self.last_cost = cost
                if self.stop.is_set():
                    break
        self.ended_at = time.monotonic()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each mode")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--model", default=None)
    add_round_args(p)
    args = p.parse_args()

    url = f"http://127.0.0.1:{args.port}"
    server = start_server(args.port, args.model)
    try:
        wait_healthy(server, url)
        rows: dict[str, list[dict]] = {"closed": [], "open": []}
        with tempfile.TemporaryDirectory() as tmp:
            bench_round(args, url, os.path.join(tmp, "warm.json"))  # warm-up, not counted
            for r in range(args.rounds):
                for mode in (("closed", "open") if r % 2 == 0 else ("open", "closed")):
                    reader = None
                    if mode == "open":
                        reader = StreamReader(url)
                        reader.start()
                        time.sleep(0.5)
                    m = bench_round(args, url, os.path.join(tmp, f"{mode}{r}.json"))
                    row = {"round": r, "tok_s": m["output_throughput"], "tpot_ms": m["tpot_ms"]["median"],
                           "ttft_ms": m["ttft_ms"]["median"]}
                    if reader is not None:
                        reader.stop.set()
                        reader.join(30)
                        cost = reader.last_cost or {}
                        seconds = max(1e-9, reader.ended_at - reader.started_at)
                        row.update(frames_per_s=reader.frames / seconds, share=cost.get("share"),
                                   feed_s=cost.get("feed_s"), step_s=cost.get("step_s"),
                                   snapshot_ms_median=statistics.median(reader.snapshot_ms),
                                   snapshot_ms_max=max(reader.snapshot_ms))
                        time.sleep(WATCH_TIMEOUT_S + 1)  # the engine's feed closes
                    rows[mode].append(row)
                    print(mode, json.dumps(row), flush=True)
        closed = [r["tok_s"] for r in rows["closed"]]
        opened = [r["tok_s"] for r in rows["open"]]
        print(f"\noutput tok/s, closed: median {statistics.median(closed):.1f} (range {min(closed):.1f}-"
              f"{max(closed):.1f}); open: median {statistics.median(opened):.1f} (range {min(opened):.1f}-"
              f"{max(opened):.1f}); open/closed {statistics.median(opened) / statistics.median(closed):.3f}")
        tpots = ([r["tpot_ms"] for r in rows["closed"]], [r["tpot_ms"] for r in rows["open"]])
        print(f"median TPOT ms, closed {statistics.median(tpots[0]):.1f}, open {statistics.median(tpots[1]):.1f}")
        shares = [r["share"] for r in rows["open"] if r["share"] is not None]
        print(f"engine-measured dashboard cost (feed time / step time) per open round: "
              f"{', '.join(f'{100 * s:.2f}%' for s in shares)}; snapshot ms median "
              f"{statistics.median(r['snapshot_ms_median'] for r in rows['open']):.2f}, max "
              f"{max(r['snapshot_ms_max'] for r in rows['open']):.2f}; frames/s "
              f"{', '.join(format(r['frames_per_s'], '.1f') for r in rows['open'])}")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
