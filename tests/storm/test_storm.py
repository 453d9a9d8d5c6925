"""The storm's CI profile against a real `pagoda serve` (its own API and engine processes) on a tiny model:
no 5xx but the documented 503s, nothing left in use, no leaked descriptors or connections, no engine restart,
and every well-formed greedy output identical to the calm run. Latencies are reported, never asserted."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pagoda.bench.storm import PROFILES, format_report, run_storm

REPO = Path(__file__).resolve().parents[2]
MAX_WAITING = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_storm_ci_profile(tiny_llama_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagoda.cli.main", "serve", "--model", tiny_llama_dir, "--dtype", "float32",
         "--num-kv-blocks", "256", "--port", str(port), "--max-waiting", str(MAX_WAITING),
         "--header-read-timeout", "2", "--body-read-timeout", "3", "--no-web-ui", "--log-level", "warning"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "the server exited while starting"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        profile = PROFILES["ci"]
        report = asyncio.run(run_storm(url, profile, max_waiting=MAX_WAITING))
        print(format_report(report, "ci"))
        assert proc.poll() is None, "the server died in the storm"
        assert report.unexpected_5xx == 0, report.statuses
        assert report.engine_restarts == 0
        assert report.well_formed_total > 0 and report.well_formed_mismatched == report.well_formed_failed == 0
        assert report.statuses["big_bodies"].get("413", 0) >= 1
        assert set(report.statuses["big_bodies"]) <= {"413", "503"}
        assert report.slowloris_closed_by_server == profile.slowloris
        assert report.statuses["slowloris"].get("408", 0) == profile.slowloris // 2  # the slow bodies
        assert 1 <= report.flood_waves <= profile.flood_waves
        assert sum(report.statuses["flood"].values()) == 10 * MAX_WAITING * report.flood_waves
        assert not report.phases_cut_by_time_limit
        before, after = report.before, report.after
        assert before is not None and after is not None
        assert after.kv_usage == after.running == after.waiting == 0
        assert after.connections == 0
        for role in ("api", "engine"):
            assert after.processes[role]["fds"] <= before.processes[role]["fds"], role
        # RSS is reported, not asserted: after a warm-up storm it stays within 1% in most runs, but grew 41% (API) /
        # 18% (engine) once under the full suite's load, and up to 28% in a second storm round in some runs of
        # `pagoda bench storm --rounds 2` (2026-12-03: flat in both runs of the default server); it depends on the
        # load's timing, and no leak was found (see the README's storm section)
    finally:
        proc.terminate()
        proc.wait(30)
