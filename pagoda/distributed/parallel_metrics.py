"""Prometheus families for a parallel engine's ``ParallelStats`` (the brief's monitoring list:
per-rank utilisation and its balance, communication time share, pipeline bubble rate)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pagoda.distributed.parallel_stats import ParallelStats


def parallel_metric_families(stats: ParallelStats, model_name: str) -> Iterator[Metric]:
    """One engine's families, labelled by model (and rank)."""
    return replica_parallel_metric_families([stats], model_name, replica_label=False)


def replica_parallel_metric_families(per_replica: Sequence[ParallelStats | None], model_name: str,
                                     replica_label: bool = True) -> Iterator[Metric]:
    """The families of several data-parallel replicas, each family once with a ``replica`` label per
    sample (a family repeated in one exposition is invalid); replicas without stats are skipped."""
    extra = ["replica"] if replica_label else []
    rows = [([model_name, str(i)] if replica_label else [model_name], s)
            for i, s in enumerate(per_replica) if s is not None]
    busy = CounterMetricFamily("pagoda:parallel_rank_busy_seconds",
                               "Seconds each rank worked (waits on the previous stage excluded).",
                               labels=["model_name", *extra, "rank"])
    util = GaugeMetricFamily("pagoda:parallel_rank_utilisation", "Share of the step time each rank worked.",
                             labels=["model_name", *extra, "rank"])
    for labels, s in rows:
        for rank, (work, u) in enumerate(zip(s.work_s, s.utilisation, strict=True)):
            busy.add_metric([*labels, str(rank)], work)
            util.add_metric([*labels, str(rank)], u)
    yield busy
    yield util
    for name, doc, value in (
        ("pagoda:parallel_utilisation_balance", "Least working rank over most working (1: even).",
         lambda p: p.balance),
        ("pagoda:parallel_comm_time_share", "Share of the ranks' work spent in tensor-parallel collectives.",
         lambda p: p.comm_share),
        ("pagoda:pipeline_bubble_rate", "Share of rank-seconds of the steps in which a rank sat idle.",
         lambda p: p.bubble_rate),
    ):
        g = GaugeMetricFamily(name, doc, labels=["model_name", *extra])
        for labels, s in rows:
            g.add_metric(labels, value(s))
        yield g


class ParallelStatsCollector(Collector):
    """Reads the latest ``ParallelStats`` at scrape time (None: nothing to export yet)."""

    def __init__(self, stats: Callable[[], ParallelStats | None], model_name: str) -> None:
        self._stats, self._model = stats, model_name

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        if s is not None:
            yield from parallel_metric_families(s, self._model)
