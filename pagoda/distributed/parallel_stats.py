"""Per-rank time accounting of a parallel engine, and the shares the monitoring derives from it.

Its own module, free of torch, because it rides in ``EngineStats`` to the HTTP process."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelStats:
    """Per-rank seconds since start, rank order: busy (inside forward / logits), in collectives,
    and waiting on the previous pipeline stage; ``step_s``: the driver's time inside ``execute``."""

    busy_s: list[float]
    comm_s: list[float]
    wait_s: list[float]
    step_s: float

    @property
    def work_s(self) -> list[float]:
        return [b - w for b, w in zip(self.busy_s, self.wait_s, strict=True)]

    @property
    def utilisation(self) -> list[float]:
        """Share of the step time each rank was working (waits for the previous stage excluded)."""
        return [w / self.step_s if self.step_s else 0.0 for w in self.work_s]

    @property
    def balance(self) -> float:
        """Least working rank over most working (1.0: even)."""
        work = self.work_s
        return min(work) / max(work) if max(work) > 0 else 1.0

    @property
    def comm_share(self) -> float:
        """Share of work time spent inside TP collectives (waits for slower peers included)."""
        return sum(self.comm_s) / sum(self.work_s) if sum(self.work_s) > 0 else 0.0

    def since(self, earlier: ParallelStats) -> ParallelStats:
        """The seconds accumulated after ``earlier`` was taken."""
        def diff(a: list[float], b: list[float]) -> list[float]:
            return [x - y for x, y in zip(a, b, strict=True)]

        return ParallelStats(diff(self.busy_s, earlier.busy_s), diff(self.comm_s, earlier.comm_s),
                             diff(self.wait_s, earlier.wait_s), self.step_s - earlier.step_s)

    @property
    def bubble_rate(self) -> float:
        """Share of rank-seconds of the steps in which a rank sat idle (the pipeline bubble)."""
        total = self.step_s * len(self.busy_s)
        return max(0.0, 1 - sum(self.work_s) / total) if total else 0.0
