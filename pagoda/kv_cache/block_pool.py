"""Fixed-size KV blocks with reference counts and a free list."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable


class BlockPoolError(RuntimeError):
    """A broken invariant: double free, over-allocation, or a leaked block."""


class BlockPool:
    """Hands out block ids ``0..num_blocks-1``.

    A block is free exactly when its reference count is 0; ``allocate`` returns blocks with
    count 1, ``incref`` adds an owner (sharing), ``free`` removes one and returns the block to
    the free list when none is left. Freed blocks go to the back of the list, so recently
    used blocks are reused last.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        # blocks a prefix cache holds one reference on; those it alone holds are evictable (counted
        # as references change, so usage is O(1) to read)
        self._cached = bytearray(num_blocks)
        self.num_evictable = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    @property
    def cached_flags(self) -> bytes:
        """One byte per block, nonzero where the prefix cache holds it (a copy: for snapshots)."""
        return bytes(self._cached)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise BlockPoolError(f"asked for {n} blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self.ref_counts[b] = 1
        return blocks

    def incref(self, blocks: Iterable[int]) -> None:
        for b in blocks:
            if self.ref_counts[b] == 0:
                raise BlockPoolError(f"block {b} is free; it cannot be shared")
            if self._cached[b] and self.ref_counts[b] == 1:
                self.num_evictable -= 1
            self.ref_counts[b] += 1

    def set_cached(self, block: int, cached: bool) -> None:
        """Marks a block the prefix cache holds (call after its incref) or lets go of (before its free)."""
        if bool(self._cached[block]) != cached and self.ref_counts[block] == 1:
            self.num_evictable += 1 if cached else -1
        self._cached[block] = cached

    def free(self, blocks: Iterable[int]) -> None:
        for b in blocks:
            if self.ref_counts[b] == 0:
                raise BlockPoolError(f"block {b} freed twice")
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self._free.append(b)
            elif self.ref_counts[b] == 1 and self._cached[b]:
                self.num_evictable += 1

    def check_integrity(self, owners: Counter[int]) -> None:
        """Every block's reference count equals the number of owners pointing at it, and the
        free list holds exactly the blocks nobody owns, each once."""
        free = list(self._free)
        if len(set(free)) != len(free):
            raise BlockPoolError("a block is on the free list twice")
        for b in range(self.num_blocks):
            if self.ref_counts[b] != owners.get(b, 0):
                raise BlockPoolError(f"block {b}: ref count {self.ref_counts[b]} but {owners.get(b, 0)} owners")
        if set(free) != {b for b in range(self.num_blocks) if self.ref_counts[b] == 0}:
            raise BlockPoolError("free list does not match the unreferenced blocks")
        evictable = sum(1 for b in range(self.num_blocks) if self._cached[b] and self.ref_counts[b] == 1)
        if evictable != self.num_evictable:
            raise BlockPoolError(f"evictable count {self.num_evictable}, actually {evictable}")
