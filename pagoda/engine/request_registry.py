"""The engine's one book of requests: each user request's group, and for each of its samples (the
scheduler's sequences) the group and the scheduler (virtual engine) that runs it."""

from __future__ import annotations

from pagoda.engine.request import Request
from pagoda.engine.request_group import RequestGroup
from pagoda.engine.scheduler_interface import SchedulerInterface


class RequestRegistry:
    """A group is registered when its request is added and removed when it finishes or is aborted;
    lookups by sample id answer None once it is gone (its step may still be in flight)."""

    def __init__(self) -> None:
        self._groups: dict[str, RequestGroup] = {}
        self._samples: dict[str, tuple[RequestGroup, SchedulerInterface]] = {}
        self.num_finished = 0

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._groups

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, group: RequestGroup, scheduler: SchedulerInterface) -> None:
        self._groups[group.request_id] = group
        for s in group.samples:
            self._samples[s.request.request_id] = (group, scheduler)

    def remove(self, request_id: str) -> RequestGroup | None:
        """Takes a finished or aborted group off the books (counted as finished)."""
        group = self._groups.pop(request_id, None)
        if group is not None:
            for s in group.samples:
                self._samples.pop(s.request.request_id, None)
            self.num_finished += 1
        return group

    def group(self, request_id: str) -> RequestGroup:
        return self._groups[request_id]

    def group_of(self, sample_id: str) -> RequestGroup | None:
        entry = self._samples.get(sample_id)
        return None if entry is None else entry[0]

    def scheduler_of(self, sample_id: str) -> SchedulerInterface | None:
        entry = self._samples.get(sample_id)
        return None if entry is None else entry[1]

    def request(self, sample_id: str) -> Request | None:
        """The sample's sequence while its scheduler still runs it."""
        scheduler = self.scheduler_of(sample_id)
        return None if scheduler is None else scheduler.requests.get(sample_id)

    def groups(self) -> list[RequestGroup]:
        return list(self._groups.values())
