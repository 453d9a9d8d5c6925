"""Prometheus families for a parallel engine's ``ParallelStats`` (the brief's monitoring list:
per-rank utilisation and its balance, communication time share, pipeline bubble rate)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pagoda.distributed.executor import ParallelStats


def parallel_metric_families(stats: ParallelStats, model_name: str) -> Iterator[Metric]:
    busy = CounterMetricFamily("pagoda:parallel_rank_busy_seconds",
                               "Seconds each rank worked (waits on the previous stage excluded).",
                               labels=["model_name", "rank"])
    util = GaugeMetricFamily("pagoda:parallel_rank_utilisation", "Share of the step time each rank worked.",
                             labels=["model_name", "rank"])
    for rank, (work, u) in enumerate(zip(stats.work_s, stats.utilisation, strict=True)):
        busy.add_metric([model_name, str(rank)], work)
        util.add_metric([model_name, str(rank)], u)
    yield busy
    yield util
    for name, doc, value in (
        ("pagoda:parallel_utilisation_balance", "Least working rank over most working (1: even).", stats.balance),
        ("pagoda:parallel_comm_time_share", "Share of the ranks' work spent in tensor-parallel collectives.",
         stats.comm_share),
        ("pagoda:pipeline_bubble_rate", "Share of rank-seconds of the steps in which a rank sat idle.",
         stats.bubble_rate),
    ):
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([model_name], value)
        yield g


class ParallelStatsCollector(Collector):
    """Reads the latest ``ParallelStats`` at scrape time (None: nothing to export yet)."""

    def __init__(self, stats: Callable[[], ParallelStats | None], model_name: str) -> None:
        self._stats, self._model = stats, model_name

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        if s is not None:
            yield from parallel_metric_families(s, self._model)
