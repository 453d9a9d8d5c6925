"""Routing policies for data-parallel engine replicas: which replica serves a new request.

- ``round_robin``: in turn.
- ``least_outstanding``: the replica with the fewest requests in flight.
- ``prefix_aware``: the replica that most likely holds the prompt's prefix in its prefix cache
  (the longest run of block-aligned prefix hashes it was last sent), unless it has
  ``max_imbalance`` more requests in flight than the least loaded one, which then takes it.

The prefix index is approximate (the replica may have evicted those blocks); it is bounded and
forgets the least recently routed prefixes first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

from pagoda.registry import Registry


class Router(ABC):
    """Contract: ``choose`` returns a replica index in ``range(num_replicas)``; it may keep state
    (turns, a prefix index) but never blocks."""

    def __init__(self, num_replicas: int) -> None:
        self.num_replicas = num_replicas

    @abstractmethod
    def choose(self, prompt_token_ids: list[int], loads: list[int]) -> int:
        """The replica for a new request; ``loads``: requests in flight on each replica."""


ROUTERS: Registry[Router] = Registry("routing policy")  # creators: (num_replicas) -> Router


@ROUTERS.register("round_robin")
class RoundRobinRouter(Router):
    def __init__(self, num_replicas: int) -> None:
        super().__init__(num_replicas)
        self._next = 0

    def choose(self, prompt_token_ids: list[int], loads: list[int]) -> int:
        i = self._next
        self._next = (i + 1) % self.num_replicas
        return i


@ROUTERS.register("least_outstanding")
class LeastOutstandingRouter(Router):
    def __init__(self, num_replicas: int) -> None:
        super().__init__(num_replicas)
        self._next = 0  # ties rotate, so an idle server still spreads its requests

    def choose(self, prompt_token_ids: list[int], loads: list[int]) -> int:
        low = min(loads)
        n = self.num_replicas
        i = next(r % n for r in range(self._next, self._next + n) if loads[r % n] == low)
        self._next = (i + 1) % n
        return i


def block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    """One hash per full block, each covering the whole prefix up to the end of its block."""
    hashes, h = [], 0
    for end in range(block_size, len(token_ids) + 1, block_size):
        h = hash((h, tuple(token_ids[end - block_size:end])))
        hashes.append(h)
    return hashes


@ROUTERS.register("prefix_aware")
class PrefixAwareRouter(Router):
    def __init__(self, num_replicas: int, block_size: int = 16, max_imbalance: int = 4,
                 max_entries: int = 200_000) -> None:
        super().__init__(num_replicas)
        self.block_size, self.max_imbalance, self.max_entries = block_size, max_imbalance, max_entries
        self._owner: OrderedDict[int, int] = OrderedDict()  # prefix hash -> replica last sent it
        self._fallback = LeastOutstandingRouter(num_replicas)
        self.prefix_routed = 0  # requests sent where their prefix was
        self.load_routed = 0  # requests sent to the least loaded replica

    def choose(self, prompt_token_ids: list[int], loads: list[int]) -> int:
        hashes = block_hashes(prompt_token_ids, self.block_size)
        best = None
        for h in reversed(hashes):  # the longest cached prefix first
            if h in self._owner:
                best = self._owner[h]
                break
        if best is not None and loads[best] - min(loads) <= self.max_imbalance:
            self.prefix_routed += 1
        else:
            best = self._fallback.choose(prompt_token_ids, loads)
            self.load_routed += 1
        for h in hashes:
            self._owner[h] = best
            self._owner.move_to_end(h)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)
        return best


def make_router(policy: str, num_replicas: int) -> Router:
    return ROUTERS.create(policy, num_replicas)
