"""Prometheus metrics under the ``pagoda:`` prefix (vLLM's names with our prefix).

Latency histograms are observed in the HTTP process, on the clock of the client's view:
TTFT and E2E run from the moment the request was parsed, inter-token latency between the
arrivals of successive deltas. Queue time comes from the engine's own timestamps
(time.monotonic() is one clock for all processes of a host). Gauges and token counters
are the engine's EngineStats, read at scrape time; with tensor / pipeline parallelism they
carry the ranks' ``ParallelStats`` (``pagoda:parallel_*``, ``pagoda:pipeline_bubble_rate``;
a ``replica`` label under data parallelism).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pagoda.distributed.parallel_metrics import parallel_metric_families, replica_parallel_metric_families
from pagoda.engine.stats import EngineStats
from pagoda.server.messages import RequestDelta
from pagoda.spec.spec_counters import SpecCounters

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0, 20.0, 40.0, 80.0, 160.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ReplicaState:
    """One data-parallel replica as ``/metrics`` labels it (Ray backend)."""

    replica: str  # its index
    node: str  # the address of the node it runs on
    up: bool
    restarts: int  # times it came back after its actor died
    stats: EngineStats | None  # its latest stats; None while it is down


ReplicaStates = Callable[[], list[ReplicaState]]


class _EngineStatsCollector(Collector):
    """Exposes the latest EngineStats; counters the engine keeps are reported as counters. With
    ``by_replica`` (data parallelism on Ray) every engine family has one sample per replica that is up,
    labelled ``replica`` and ``node`` (the totals are a ``sum`` in PromQL), and ``pagoda:replica_up`` /
    ``pagoda:replica_restarts`` say which replicas are up and how often each came back."""

    def __init__(self, stats: Callable[[], EngineStats | None], model_name: str,
                 by_replica: ReplicaStates | None = None) -> None:
        self._stats = stats
        self._model = model_name
        self._by_replica = by_replica

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name"]
        states = self._by_replica() if self._by_replica is not None else None
        if states is not None:  # said even while every replica is down
            labels = ["model_name", "replica", "node"]
            up = GaugeMetricFamily("pagoda:replica_up", "1 while the data-parallel replica serves, 0 while it "
                                   "is down (restarting, or dead for good).", labels=labels)
            restarts = CounterMetricFamily("pagoda:replica_restarts", "Times the replica came back after its "
                                           "actor died.", labels=labels)
            for r in states:
                up.add_metric([self._model, r.replica, r.node], 1.0 if r.up else 0.0)
                restarts.add_metric([self._model, r.replica, r.node], r.restarts)
            yield up
            yield restarts
        s = self._stats()
        if s is None:
            return
        rows: list[tuple[list[str], EngineStats]] = [([self._model], s)]
        if states is not None:
            rows = [([self._model, r.replica, r.node], r.stats) for r in states if r.stats is not None]

        def gauge(name: str, doc: str, value: Callable[[EngineStats], float]) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            for values, r in rows:
                g.add_metric(values, value(r))
            return g

        def counter(name: str, doc: str, value: Callable[[EngineStats], float]) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            for values, r in rows:
                c.add_metric(values, value(r))
            return c

        yield gauge("pagoda:num_requests_running", "Requests in the running batch.", lambda r: r.num_running)
        yield gauge("pagoda:num_requests_waiting", "Requests waiting to be scheduled (preempted included).",
                    lambda r: r.num_waiting)
        yield gauge("pagoda:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1).",
                    lambda r: r.kv_cache_usage)
        yield gauge("pagoda:prefix_cache_hit_rate", "Prefix cache hits / queries (tokens), since start.",
                    lambda r: r.prefix_cache_hits_total / r.prefix_cache_queries_total
                    if r.prefix_cache_queries_total else 0.0)
        yield counter("pagoda:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      lambda r: r.prefix_cache_queries_total)
        yield counter("pagoda:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                      lambda r: r.prefix_cache_hits_total)
        yield counter("pagoda:prompt_tokens", "Prompt tokens computed (prefix-cache hits excluded, "
                      "recomputation after preemption included).", lambda r: r.prompt_tokens_total)
        yield counter("pagoda:generation_tokens", "Generated tokens.", lambda r: r.generation_tokens_total)
        yield counter("pagoda:num_preemptions", "Preemptions (recompute) of running requests.",
                      lambda r: r.num_preemptions_total)
        yield counter("pagoda:engine_steps", "Engine iterations.", lambda r: r.num_steps)
        if s.spec is not None:
            yield from spec_metric_families(s.spec, self._model)
        # tensor / pipeline parallelism: per-rank utilisation, balance, comm share, bubble rate
        if s.parallel is not None:
            yield from parallel_metric_families(s.parallel, self._model)
        elif any(r.parallel is not None for r in s.replicas):  # data-parallel replicas, each TP / PP
            yield from replica_parallel_metric_families([r.parallel for r in s.replicas], self._model)


def spec_metric_families(spec: SpecCounters, model: str) -> Iterator[Metric]:
    """Speculative decoding's counters, named as vLLM's ``vllm:spec_decode_*``."""
    for name, doc, value in (
            ("num_drafts", "Proposals verified (one per speculated request and step).", spec.num_drafts),
            ("num_draft_tokens", "Proposed tokens.", spec.num_draft_tokens),
            ("num_accepted_tokens", "Proposed tokens the target model kept.", spec.num_accepted_tokens)):
        c = CounterMetricFamily(f"pagoda:spec_decode_{name}", doc, labels=["model_name"])
        c.add_metric([model], value)
        yield c
    per = CounterMetricFamily("pagoda:spec_decode_num_accepted_tokens_per_pos",
                              "Proposals whose token at this position (0-based) was kept.",
                              labels=["model_name", "position"])
    for j, n in enumerate(spec.accepted_per_position):
        per.add_metric([model, str(j)], n)
    yield per
    rate = GaugeMetricFamily("pagoda:spec_decode_acceptance_rate", "Accepted / proposed tokens, since start.",
                             labels=["model_name"])
    rate.add_metric([model], spec.num_accepted_tokens / spec.num_draft_tokens if spec.num_draft_tokens else 0.0)
    yield rate


class ServerMetrics:
    def __init__(self, model_name: str, stats: Callable[[], EngineStats | None],
                 by_replica: ReplicaStates | None = None) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram("pagoda:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.itl = Histogram("pagoda:inter_token_latency_seconds", "Time between successive outputs.", labels,
                             buckets=_ITL_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram("pagoda:e2e_request_latency_seconds", "End-to-end request latency.", labels,
                             buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.queue_time = Histogram("pagoda:request_queue_time_seconds", "Time spent waiting before the first "
                                    "schedule.", labels, buckets=_LATENCY_BUCKETS,
                                    registry=self.registry).labels(model_name)
        self._success = Counter("pagoda:request_success", "Finished requests by finish reason.",
                                labels + ["finished_reason"], registry=self.registry)
        self._failed = Counter("pagoda:request_failure", "Requests that ended in an error.",
                               labels + ["status"], registry=self.registry)
        for reason in ("stop", "length"):  # so dashboards see zeros before the first request
            self._success.labels(model_name, reason)
        self.registry.register(_EngineStatsCollector(stats, model_name, by_replica))

    def track(self, arrival_time: float) -> RequestTimer:
        return RequestTimer(self, arrival_time)

    def count_success(self, finish_reason: str) -> None:
        self._success.labels(self.model_name, finish_reason).inc()

    def count_failure(self, status: int) -> None:
        self._failed.labels(self.model_name, str(status)).inc()


class RequestTimer:
    """Observes one engine request's latencies as its deltas arrive."""

    def __init__(self, metrics: ServerMetrics, arrival_time: float) -> None:
        self._m = metrics
        self.arrival_time = arrival_time
        self._last: float | None = None

    def on_delta(self, delta: RequestDelta) -> None:
        now = time.monotonic()
        num_tokens = max((len(s.token_ids) for s in delta.samples), default=0)
        if num_tokens:
            if self._last is None:
                self._m.ttft.observe(now - self.arrival_time)
            else:
                self._m.itl.observe(now - self._last)
            # tokens that reach the reader together (a speculated step, or deltas merged for a reader that fell
            # behind) are 0 s apart: one observation per token whatever the delivery
            for _ in range(num_tokens - 1):
                self._m.itl.observe(0.0)
            self._last = now
        if delta.finished:
            self._m.e2e.observe(now - self.arrival_time)
            m = delta.metrics
            if m is not None and m.first_scheduled_time is not None:
                self._m.queue_time.observe(max(0.0, m.first_scheduled_time - m.arrival_time))
            reason = next((s.finish_reason for s in delta.samples if s.finish_reason), None)
            self._m.count_success(reason or "stop")
