"""`pagoda bench storm --url http://127.0.0.1:8000`: fuzzed, hostile and overloaded traffic against a
local server, checking that nothing is lost or leaked and that well-formed greedy requests still get
exactly their calm outputs.

Phases, run at once and bounded in count and time (loopback servers only): requests generated from
the server's OpenAPI routes (``storm_requests``), streams cut at random points, slowloris connections
(headers or bodies that never finish), 10 MB bodies, bursts of 10x ``--max-waiting`` requests (one wave
after another while the other phases run), and adversarial structured-output specs; meanwhile a steady
stream of well-formed greedy requests that retry a 503 after its Retry-After. Before and after: KV blocks and requests in use, open
connections, file descriptors and RSS of the API server and engine processes, the engine's pid; the
snapshots are taken after the server has been idle for a few seconds (``pagoda serve`` gives freed memory
back then), and RSS is also read the moment the storm has drained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

import httpx

from pagoda.bench import process_probe
from pagoda.bench.storm_probe import OverloadProbe, ProbeResult
from pagoda.bench.storm_requests import SchemaRequestGenerator, adversarial_specs

HELP = "storm: fuzzed, hostile and overloaded traffic against a local server; reports what was lost or leaked"

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# before each snapshot: connections just closed reach their end on the server's side, and a server idle for
# this long has given freed memory back (pagoda serve: after 2 s, --idle-memory-release)
_SETTLE_S = 5.0
_PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The three primary colors are",
            "In 1969, the first", "A recipe for bread:", "Dear diary, today", "The speed of light is"]


@dataclass(frozen=True)
class StormProfile:
    generated: int  # requests generated from the OpenAPI routes
    cut_streams: int
    slowloris: int
    big_bodies: int  # 10 MB each
    adversarial: int  # costly structured-output specs
    well_formed_prompts: int  # greedy prompts checked against the calm run
    well_formed_tokens: int
    concurrency: int  # generated requests and cut streams in flight at once
    time_limit_s: float  # the storm phases are cancelled past this
    flood_waves: int = 1  # bursts of 10x --max-waiting, one after another while the other phases run
    slow_hold_s: float = 45.0  # a slowloris connection gives up after this if the server never closes it


PROFILES = {
    "ci": StormProfile(generated=150, cut_streams=30, slowloris=16, big_bodies=2, adversarial=16,
                       well_formed_prompts=4, well_formed_tokens=12, concurrency=8, time_limit_s=60.0, flood_waves=3),
    "full": StormProfile(generated=10_000, cut_streams=500, slowloris=200, big_bodies=10, adversarial=50,
                         well_formed_prompts=8, well_formed_tokens=32, concurrency=32, time_limit_s=1800.0,
                         flood_waves=40),
}


@dataclass
class Snapshot:
    kv_usage: float
    running: float
    waiting: float
    preemptions: float
    connections: int
    processes: dict[str, dict[str, int]]  # "api" / "engine" -> pid, fds, rss_bytes


@dataclass
class StormReport:
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> status -> count
    unexpected_5xx: int = 0
    calm_latency_s: dict[str, float] = field(default_factory=dict)
    storm_latency_s: dict[str, float] = field(default_factory=dict)
    retries_after_503: int = 0
    answer_503_s: dict[str, float] = field(default_factory=dict)  # as the storm's own clients timed them
    # a separate probe process, one request at a time (see storm_probe): statuses, and its 503s' times
    probe_statuses: dict[str, int] = field(default_factory=dict)
    probe_503_s: dict[str, float] = field(default_factory=dict)  # whole answer
    probe_503_first_byte_s: dict[str, float] = field(default_factory=dict)
    probe_503_connect_s: dict[str, float] = field(default_factory=dict)
    probe_samples: list[tuple[int | str, float, float, float]] = field(default_factory=list)  # status, connect,
    # first byte, whole answer (s): for pooling runs
    well_formed_total: int = 0
    well_formed_mismatched: int = 0
    well_formed_failed: int = 0
    slowloris_closed_by_server: int = 0
    drain_s: float = 0.0
    before: Snapshot | None = None
    after: Snapshot | None = None
    after_rounds: list[Snapshot] = field(default_factory=list)  # after each storm round (the last is `after`)
    engine_restarts: int = 0
    flood_waves: int = 0  # bursts of 10x --max-waiting sent during the storm
    rss_at_drain: dict[str, int] = field(default_factory=dict)  # api / engine RSS bytes the moment the storm
    # drained, before the settle wait of the `after` snapshot (in which the server may give memory back)
    phases_cut_by_time_limit: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the server, on this host (http://127.0.0.1:PORT)")
    parser.add_argument("--model", default=None, help="the served model name (default: the first of /v1/models)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--max-waiting", type=int, default=32, help="the server's --max-waiting (the burst is 10x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds for the storm's phases "
                        "(default: the profile's); phases still running then are cancelled and reported")
    parser.add_argument("--rounds", type=int, default=1, help="storms in a row (the well-formed requests and the "
                        "503 probe run through all), with RSS and descriptors after each: a leak grows every round")
    parser.add_argument("--json-out", default=None, help="also write the report here")


def run(args: argparse.Namespace) -> int:
    profile = PROFILES[args.profile]
    if args.time_limit is not None:
        profile = replace(profile, time_limit_s=args.time_limit)
    report = asyncio.run(run_storm(args.url, profile, max_waiting=args.max_waiting,
                                   model=args.model, api_key=args.api_key, seed=args.seed, rounds=args.rounds))
    print(format_report(report, args.profile))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(asdict(report), f, indent=2)
    return 0


async def run_storm(url: str, profile: StormProfile, *, max_waiting: int, model: str | None = None,
                    api_key: str | None = None, seed: int = 0, rounds: int = 1) -> StormReport:
    parsed = urlparse(url)
    if parsed.hostname not in _LOOPBACK or parsed.port is None:
        raise SystemExit(f"the storm runs against a server on this host only (got {url!r})")
    if rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    storm = _Storm(url.rstrip("/"), parsed.port, profile, max_waiting, api_key, seed, rounds)
    return await storm.run(model)


class _Storm:
    def __init__(self, url: str, port: int, profile: StormProfile, max_waiting: int, api_key: str | None,
                 seed: int, rounds: int = 1) -> None:
        self.url, self.port, self.profile, self.max_waiting = url, port, profile, max_waiting
        self.rounds = rounds
        self.seed, self.rng = seed, random.Random(seed)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.statuses: dict[str, Counter[str]] = {}
        self.times_503: list[float] = []
        self.report = StormReport()
        self.model = ""
        self.calm: dict[str, str] = {}

    def count(self, phase: str, status: int | str, elapsed: float | None = None) -> None:
        self.statuses.setdefault(phase, Counter())[str(status)] += 1
        if status == 503 and elapsed is not None:
            self.times_503.append(elapsed)
        if isinstance(status, int) and status >= 500 and status != 503:
            self.report.unexpected_5xx += 1

    async def run(self, model: str | None) -> StormReport:
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=120) as client:
            self.model = model or (await client.get("/v1/models")).json()["data"][0]["id"]
            openapi = (await client.get("/openapi.json")).json()
            await self.warm_up(openapi)
            await self.drain(client)
        self.report.before = await self.snapshot()
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=120) as client:
            calm_latencies = []
            for _ in range(3):  # calm: one at a time
                for prompt in _PROMPTS[:self.profile.well_formed_prompts]:
                    text, elapsed, _ = await self.well_formed(client, prompt)
                    if text is None:
                        raise RuntimeError(f"the calm run failed for {prompt!r}")
                    self.calm.setdefault(prompt, text)
                    calm_latencies.append(elapsed)
            self.report.calm_latency_s = _percentiles(calm_latencies)
            storm_done = asyncio.Event()
            probe = OverloadProbe(self.port, "/v1/completions", {"model": self.model, "prompt": "Probe",
                                                                 "max_tokens": 1}, self.headers)
            probe.start()
            steady = asyncio.ensure_future(self.steady(client, storm_done))
            try:
                for i in range(self.rounds):
                    if i:  # (the well-formed lanes still run) the storm again: growth from here on is a leak
                        self.report.after_rounds.append(await self.snapshot())
                    await self.storm_round(openapi)
            finally:
                self.record_probe(await asyncio.get_running_loop().run_in_executor(None, probe.stop))
                storm_done.set()
            storm_latencies = await steady
            self.report.storm_latency_s = _percentiles(storm_latencies)
            self.report.drain_s = await self.drain(client)
        self.report.rss_at_drain = {role: u["rss_bytes"] for role, u in self.processes().items()}
        self.report.after = await self.snapshot()
        self.report.after_rounds.append(self.report.after)
        self.report.statuses = {k: dict(sorted(v.items())) for k, v in self.statuses.items()}
        self.report.answer_503_s = _percentiles(self.times_503)
        before, after = self.report.before, self.report.after
        if before and after and before.processes.get("engine", {}).get("pid") != after.processes.get("engine", {}).get("pid"):
            self.report.engine_restarts = 1
        self.report.duration_s = time.monotonic() - start
        return self.report

    def record_probe(self, result: ProbeResult) -> None:
        self.report.probe_statuses = dict(sorted(Counter(str(x.status) for x in result.samples).items()))
        self.report.probe_samples = [(x.status, x.connect_s, x.first_byte_s, x.total_s) for x in result.samples]
        self.report.probe_503_s = _percentiles(result.times(503))
        self.report.probe_503_first_byte_s = _percentiles(result.times(503, "first_byte_s"))
        self.report.probe_503_connect_s = _percentiles(result.times(503, "connect_s"))
        self.report.unexpected_5xx += sum(1 for x in result.samples if isinstance(x.status, int)
                                          and x.status >= 500 and x.status != 503)

    async def storm_round(self, openapi: dict[str, Any]) -> None:
        """Every phase at once; those still running past the profile's time limit are cancelled."""
        phases = {"generated": self.generated(openapi), "cut_streams": self.cut_streams(),
                  "slowloris": self.slowloris(), "big_bodies": self.big_bodies(), "adversarial": self.adversarial()}
        tasks = {name: asyncio.ensure_future(coro) for name, coro in phases.items()}
        others = list(tasks.values())
        # the queue is driven past its limit in waves for as long as the other phases run, so that the 503
        # probe samples a full queue throughout the storm, not during one burst only
        tasks["flood"] = asyncio.ensure_future(self.flood(self.profile.flood_waves,
                                                          lambda: not all(t.done() for t in others)))
        _, pending = await asyncio.wait(tasks.values(), timeout=self.profile.time_limit_s)
        for name, task in tasks.items():
            if task in pending:
                task.cancel()
                self.report.phases_cut_by_time_limit.append(name)
            elif task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*pending, return_exceptions=True)

    # -- the well-formed requests -----------------------------------------------------
    async def well_formed(self, client: httpx.AsyncClient, prompt: str) -> tuple[str | None, float, int]:
        """(text or None, latency including waits after 503s, retries) of one greedy request."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": self.profile.well_formed_tokens,
                "temperature": 0, "ignore_eos": True}
        start = time.monotonic()
        for retry in range(100):
            sent = time.monotonic()
            try:
                r = await client.post("/v1/completions", json=body)
            except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError, httpx.WriteError) as e:
                # a kept-alive connection the server closed as we reused it (its keep-alive or header
                # timeout ran out): good clients send again
                self.count("well_formed", type(e).__name__)
                continue
            except httpx.TimeoutException as e:  # no answer within the client's timeout: a failure, reported
                self.count("well_formed", type(e).__name__)
                return None, time.monotonic() - start, retry
            self.count("well_formed", r.status_code, time.monotonic() - sent)
            if r.status_code == 503:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            if r.status_code != 200:
                return None, time.monotonic() - start, retry
            return r.json()["choices"][0]["text"], time.monotonic() - start, retry
        return None, time.monotonic() - start, 100

    async def steady(self, client: httpx.AsyncClient, done: asyncio.Event) -> list[float]:
        latencies: list[float] = []
        prompts = _PROMPTS[:self.profile.well_formed_prompts]

        async def one_lane(offset: int) -> None:
            i = offset
            while not done.is_set():
                prompt = prompts[i % len(prompts)]
                i += 1
                text, elapsed, retries = await self.well_formed(client, prompt)
                self.report.well_formed_total += 1
                self.report.retries_after_503 += retries
                if text is None:
                    self.report.well_formed_failed += 1
                else:
                    latencies.append(elapsed)
                    self.report.well_formed_mismatched += text != self.calm[prompt]

        await asyncio.gather(one_lane(0), one_lane(1))
        return latencies

    # -- the storm's phases ---------------------------------------------------------------
    async def generated(self, openapi: dict[str, Any]) -> None:
        gen = SchemaRequestGenerator(openapi, self.model, random.Random(self.rng.random()))
        sem = asyncio.Semaphore(self.profile.concurrency)
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=120) as client:
            async def one() -> None:
                path, body = gen.next()
                async with sem:
                    await self.send("generated", client, path, json.dumps(body).encode())

            await asyncio.gather(*(one() for _ in range(self.profile.generated)))

    async def send(self, phase: str, client: httpx.AsyncClient, path: str, content: bytes) -> None:
        start = time.monotonic()
        try:
            async with client.stream("POST", path, content=content,
                                     headers={"Content-Type": "application/json"}) as r:
                async for _ in r.aiter_bytes():
                    pass
                self.count(phase, r.status_code, time.monotonic() - start)
        except httpx.HTTPError as e:
            self.count(phase, type(e).__name__)

    async def cut_streams(self) -> None:
        sem = asyncio.Semaphore(self.profile.concurrency)
        rng = random.Random(self.rng.random())
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=120) as client:
            async def one(i: int) -> None:
                cut_after = rng.randrange(-1, 30)  # -1: gone before the first byte of the answer
                body: dict[str, Any] = {"model": self.model, "prompt": rng.choice(_PROMPTS), "max_tokens": 64,
                                        "stream": True, "ignore_eos": True, "temperature": 1.0, "seed": i}
                if i % 4 == 0:
                    body["guided_regex"] = "[a-z ]{1,200}"  # disconnects during constrained steps too
                if i % 5 == 0:
                    body["n"] = 2
                async with sem:
                    try:
                        if cut_after < 0:
                            await asyncio.wait_for(client.post("/v1/completions", json=body),
                                                   timeout=rng.uniform(0.01, 0.3))
                            self.count("cut_streams", "finished_before_cut")
                            return
                        async with client.stream("POST", "/v1/completions", json=body) as r:
                            lines = 0
                            async for _ in r.aiter_lines():
                                lines += 1
                                if lines > cut_after:
                                    break
                            self.count("cut_streams", r.status_code)
                    except (TimeoutError, httpx.HTTPError):
                        self.count("cut_streams", "cut")

            await asyncio.gather(*(one(i) for i in range(self.profile.cut_streams)))

    async def slowloris(self) -> None:
        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            body = json.dumps({"model": self.model, "prompt": "slow", "max_tokens": 1}).encode()
            auth = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n").encode()
            # even: headers that never end; odd: whole headers, then a body that never ends
            trickle, sent = (head, 20) if i % 2 == 0 else (head + b"\r\n" + body[:-1], len(head) + 2)
            deadline = time.monotonic() + self.profile.slow_hold_s
            try:
                writer.write(trickle[:sent])
                while time.monotonic() < deadline:
                    try:
                        data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
                    except TimeoutError:
                        if sent < len(trickle):
                            writer.write(trickle[sent:sent + 1])  # one byte a second
                            sent += 1
                        continue
                    if not data or data.startswith(b"HTTP/1.1 408"):
                        self.report.slowloris_closed_by_server += 1
                        self.count("slowloris", 408 if data else "closed")
                        return
                    self.count("slowloris", int(data.split()[1]))
                    return
                self.count("slowloris", "still_open")
            except (ConnectionError, OSError):
                self.report.slowloris_closed_by_server += 1
                self.count("slowloris", "reset")
            finally:
                writer.close()

        await asyncio.gather(*(one(i) for i in range(self.profile.slowloris)))

    async def big_bodies(self) -> None:
        payload = json.dumps({"model": self.model, "prompt": "x" * (10 * 1024 * 1024), "max_tokens": 1}).encode()
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=120) as client:
            for _ in range(self.profile.big_bodies):
                await self.send("big_bodies", client, "/v1/completions", payload)

    async def flood(self, waves: int = 1, more: Callable[[], bool] = lambda: True) -> None:
        """Bursts of 10x --max-waiting requests at once: the first always, then more while ``more()``."""
        n = 10 * self.max_waiting
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=300, limits=limits) as client:
            body = json.dumps({"model": self.model, "prompt": "Flood", "max_tokens": 8, "ignore_eos": True}).encode()
            for wave in range(waves):
                if wave and not more():
                    break
                await asyncio.gather(*(self.send("flood", client, "/v1/completions", body) for _ in range(n)))
                self.report.flood_waves += 1

    async def adversarial(self) -> None:
        # the same specs in the warm-up and the storm: what stays cached after the warm-up is the baseline
        specs = adversarial_specs(self.profile.adversarial, random.Random(self.seed))
        sem = asyncio.Semaphore(4)
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=300) as client:
            async def one(spec: dict[str, Any]) -> None:
                body = {"model": self.model, "prompt": "Answer:", "max_tokens": 8, **spec}
                async with sem:
                    await self.send("adversarial", client, "/v1/completions", json.dumps(body).encode())

            await asyncio.gather(*(one(s) for s in specs))

    # -- before and after --------------------------------------------------------------------
    async def drain(self, client: httpx.AsyncClient, timeout_s: float = 120.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            m = await self.metrics(client)
            if not m.get("pagoda:num_requests_running") and not m.get("pagoda:num_requests_waiting") \
                    and not m.get("pagoda:kv_cache_usage_perc"):
                break
            await asyncio.sleep(0.1)
        return time.monotonic() - start

    async def metrics(self, client: httpx.AsyncClient) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in (await client.get("/metrics")).text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                name = key.split("{", 1)[0]
                out[name] = out.get(name, 0.0) + float(value)
        return out

    async def warm_up(self, openapi: dict[str, Any]) -> None:
        """The same storm (at most 1,000 generated requests), so that the baseline holds what serving
        warms up once (allocator arenas at the storm's high-water mark, compiled-grammar caches,
        tokenizer tables) and before/after compares storm with storm: growth then is a leak."""
        full = self.profile
        self.profile = replace(full, generated=min(full.generated, 1000), cut_streams=min(full.cut_streams, 100),
                               slowloris=min(full.slowloris, 50))
        try:
            await asyncio.gather(self.generated(openapi), self.cut_streams(), self.slowloris(), self.big_bodies(),
                                 self.flood(), self.adversarial())
        finally:
            self.profile = full
            self.statuses.clear()
            self.times_503.clear()
            self.report.unexpected_5xx = 0
            self.report.slowloris_closed_by_server = 0
            self.report.flood_waves = 0

    async def snapshot(self) -> Snapshot:
        await asyncio.sleep(_SETTLE_S)
        # a fresh connection, closed after: none of ours stays open to be counted
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30,
                                     limits=httpx.Limits(max_keepalive_connections=0)) as client:
            m = await self.metrics(client)
        processes = self.processes()
        return Snapshot(kv_usage=m.get("pagoda:kv_cache_usage_perc", 0.0),
                        running=m.get("pagoda:num_requests_running", 0.0),
                        waiting=m.get("pagoda:num_requests_waiting", 0.0),
                        preemptions=m.get("pagoda:num_preemptions_total", m.get("pagoda:num_preemptions", 0.0)),
                        connections=process_probe.established_connections(self.port),
                        processes=processes)

    def processes(self) -> dict[str, dict[str, int]]:
        """pid, descriptors and RSS of the API process (the one listening) and its engine (its largest child)."""
        processes: dict[str, dict[str, int]] = {}
        api_pid = process_probe.listening_pid(self.port)
        if api_pid is not None:
            pids = {"api": api_pid}
            engines = process_probe.children(api_pid)
            if engines:
                pids["engine"] = max(engines, key=lambda p: (u.rss_bytes if (u := process_probe.usage(p)) else 0))
            for role, pid in pids.items():
                u = process_probe.usage(pid)
                if u is not None:
                    processes[role] = {"pid": u.pid, "fds": u.fds, "rss_bytes": u.rss_bytes}
        return processes


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(values), "p50": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


def format_report(r: StormReport, profile: str) -> str:
    lines = [f"storm ({profile} profile): {r.duration_s:.1f} s"]
    lines.append("responses by status:")
    for phase, counts in r.statuses.items():
        lines.append(f"  {phase:<13} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    lines.append(f"unexpected 5xx (other than 503): {r.unexpected_5xx}")
    lines.append(f"503 answer time, probe process (one at a time): {_fmt(r.probe_503_s)}; first byte "
                 f"{_fmt(r.probe_503_first_byte_s)}; connect {_fmt(r.probe_503_connect_s)}")
    lines.append(f"  probe answers: {', '.join(f'{k}: {v}' for k, v in r.probe_statuses.items()) or 'none'}")
    lines.append(f"503 answer time, as the storm's own clients timed them: {_fmt(r.answer_503_s)}")
    lines.append(f"well-formed latency calm:  {_fmt(r.calm_latency_s)}")
    lines.append(f"well-formed latency storm: {_fmt(r.storm_latency_s)} (retries after 503: {r.retries_after_503})")
    if r.calm_latency_s and r.storm_latency_s:
        lines.append(f"  ratio storm/calm: p50 {r.storm_latency_s['p50'] / r.calm_latency_s['p50']:.2f}x, "
                     f"p99 {r.storm_latency_s['p99'] / r.calm_latency_s['p99']:.2f}x")
    lines.append(f"well-formed outputs: {r.well_formed_total - r.well_formed_mismatched - r.well_formed_failed}"
                 f"/{r.well_formed_total} identical to calm ({r.well_formed_mismatched} differ, "
                 f"{r.well_formed_failed} failed)")
    lines.append(f"slowloris connections closed by the server: {r.slowloris_closed_by_server}")
    lines.append(f"drained in {r.drain_s:.1f} s; engine restarts: {r.engine_restarts}; flood waves: {r.flood_waves}")
    if r.phases_cut_by_time_limit:
        lines.append(f"phases cut by the time limit: {', '.join(r.phases_cut_by_time_limit)}")
    if r.before and r.after:
        lines.append(f"{'':<22}{'before':>14}{'after':>14}")
        rows = [("KV cache usage", r.before.kv_usage, r.after.kv_usage),
                ("requests running", r.before.running, r.after.running),
                ("requests waiting", r.before.waiting, r.after.waiting),
                ("preemptions (total)", r.before.preemptions, r.after.preemptions),
                ("open connections", r.before.connections, r.after.connections)]
        for role in ("api", "engine"):
            b, a = r.before.processes.get(role, {}), r.after.processes.get(role, {})
            rows.append((f"{role} fds", b.get("fds", -1), a.get("fds", -1)))
            rows.append((f"{role} RSS MiB", b.get("rss_bytes", 0) / 2**20, a.get("rss_bytes", 0) / 2**20))
        for name, before, after in rows:
            lines.append(f"  {name:<20}{before:>14.4g}{after:>14.4g}")
        if r.rss_at_drain:
            lines.append("  RSS MiB the moment the storm drained (before the settle wait): " + ", ".join(
                f"{role} {v / 2**20:.1f}" for role, v in r.rss_at_drain.items()))
        if len(r.after_rounds) > 1:
            for role in ("api", "engine"):
                series = [r.before, *r.after_rounds]
                lines.append(f"  {role} RSS MiB by round: " + " -> ".join(
                    f"{s.processes.get(role, {}).get('rss_bytes', 0) / 2**20:.1f}" for s in series))
                lines.append(f"  {role} fds by round: " + " -> ".join(
                    str(s.processes.get(role, {}).get("fds", -1)) for s in series))
    return "\n".join(lines)


def _fmt(p: dict[str, float]) -> str:
    if not p:
        return "none"
    return f"p50 {p['p50'] * 1000:.1f} ms, p99 {p['p99'] * 1000:.1f} ms (n={int(p['n'])})"
