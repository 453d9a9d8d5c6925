"""Rounds of `pagoda bench serve` against servers a benchmark started itself (the A/B scripts
``dashboard_overhead`` and ``ray_data_parallel`` run their modes in interleaved rounds this way)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import httpx


def add_round_args(p: argparse.ArgumentParser) -> None:
    """The workload of every round: --num-prompts, --input-len, --output-len, --max-concurrency."""
    p.add_argument("--num-prompts", type=int, default=48)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--max-concurrency", type=int, default=16)


def start_server(port: int, model: str | None, *flags: str) -> subprocess.Popen:
    """`pagoda serve` on 127.0.0.1:``port`` (the bundled model unless ``model``) with extra ``flags``."""
    cmd = [sys.executable, "-m", "pagoda.cli.main", "serve", "--port", str(port), "--log-level", "warning", *flags]
    if model:
        cmd += ["--model", model]
    return subprocess.Popen(cmd)


def wait_healthy(server: subprocess.Popen, url: str, timeout_s: float = 600) -> None:
    """Returns once ``url``/health answers 200; exits if the server died or did not come up in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server at {url} did not start")
        time.sleep(1)


def bench_round(args: argparse.Namespace, url: str, out: str) -> dict:
    """One `pagoda bench serve` run of the random workload against ``url``; its metrics (written to ``out``)."""
    cmd = [sys.executable, "-m", "pagoda.cli.main", "bench", "serve", "--url", url, "--workload", "random",
           "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len), "--output-len",
           str(args.output_len), "--max-concurrency", str(args.max_concurrency), "--num-warmups", "0",
           "--result-json", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)["metrics"]
