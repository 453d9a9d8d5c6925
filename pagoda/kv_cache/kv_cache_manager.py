"""Per-request block tables over a shared BlockPool, with an optional radix-tree prefix cache."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pagoda.kv_cache.block_pool import BlockPool, BlockPoolError
from pagoda.kv_cache.radix_cache import RadixCache, RadixNode


@dataclass
class PrefixCacheCounters:
    queried_tokens: int = 0
    hit_tokens: int = 0


@dataclass
class _CacheCursor:
    """How far a request's blocks have been inserted into the tree."""

    node: RadixNode | None = None
    num_blocks: int = 0


@dataclass(frozen=True)
class BlockInfo:
    block: int
    ref_count: int
    requests: tuple[str, ...]
    cached: bool  # mapped by the prefix tree


@dataclass(frozen=True)
class BlockMapSnapshot:
    """Who owns every block: for dashboards. Free blocks have no owner."""

    num_blocks: int
    block_size: int
    free: tuple[int, ...]
    used: tuple[BlockInfo, ...] = field(default=())


class KVCacheManager:
    """Owns every request's block table.

    Verbs:
    - ``match_prefix(token_ids, salt)``: the longest cached prefix (full blocks, always leaving at
      least one token to compute); no side effects until passed to ``allocate``.
    - ``allocate(request_id, num_tokens, num_computed=0, prefix=())``: make the request's table hold
      ``num_tokens`` tokens, starting from ``prefix`` for a new request; blocks about to be written
      (positions ``num_computed ..``) that are shared are copied first (copy-on-write; the copies
      to perform are handed out by ``take_block_copies``). Evicts unreferenced cached blocks when
      the pool is short. Returns the table, or ``None`` when even eviction cannot make room, in
      which case nothing changed (the scheduler then preempts someone and retries).
    - ``free(request_id)``: drops the request's references at once (finish, abort, failure,
      preemption); cached blocks stay in the tree. Unknown requests are a no-op.
    - ``fork(parent_id, child_id)``: the child shares all of the parent's blocks.
    - ``truncate(request_id, num_tokens)``: gives back the blocks past the first ``num_tokens``
      tokens (rejected speculative tokens' slots).
    - ``cache_blocks(request_id, token_ids, num_computed, num_prompt)``: insert the request's full
      computed blocks into the prefix tree (as it goes, so chunked prefills are shared early); only
      those of its prompt unless ``cache_generated_tokens``.
    Block tables returned are live lists: valid until the next call that changes that request.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False,
                 cache_generated_tokens: bool = True) -> None:
        self.block_size = block_size
        self.cache_generated_tokens = cache_generated_tokens
        self.pool = BlockPool(num_blocks)
        # a block id past the pool, never handed out: the runner allocates it too, for dummy rows
        # whose K/V nobody reads (static batching's padding)
        self.scratch_block = num_blocks
        self.block_tables: dict[str, list[int]] = {}
        self.cache = RadixCache(self.pool, block_size) if enable_prefix_caching else None
        self.counters = PrefixCacheCounters()
        self._cursors: dict[str, _CacheCursor] = {}
        self._salts: dict[str, str | None] = {}
        self._copies: list[tuple[int, int]] = []

    # -- prefix cache ---------------------------------------------------------------------
    def match_prefix(self, token_ids: Sequence[int], salt: str | None = None) -> list[RadixNode]:
        if self.cache is None:
            return []
        return self.cache.match(token_ids, salt, max_blocks=(len(token_ids) - 1) // self.block_size)

    def record_query(self, num_tokens: int, prefix: Sequence[RadixNode]) -> None:
        """Counts one admission's lookup: ``num_tokens`` asked for, the prefix's tokens found."""
        if self.cache is not None:
            self.counters.queried_tokens += num_tokens
            self.counters.hit_tokens += len(prefix) * self.block_size

    def cache_blocks(self, request_id: str, token_ids: Sequence[int], num_computed: int,
                     num_prompt: int | None = None) -> None:
        if self.cache is None or request_id not in self.block_tables:
            return
        if not self.cache_generated_tokens and num_prompt is not None:
            num_computed = min(num_computed, num_prompt)
        cursor = self._cursors.setdefault(request_id, _CacheCursor())
        full = min(num_computed // self.block_size, len(self.block_tables[request_id]))
        if full > cursor.num_blocks:
            cursor.node = self.cache.insert(token_ids, self.block_tables[request_id][:full],
                                            self._salts.get(request_id), cursor.node, cursor.num_blocks)
            cursor.num_blocks = full

    # -- allocation -------------------------------------------------------------------------
    def blocks_needed(self, request_id: str, num_tokens: int, num_computed: int = 0) -> int:
        table = self.block_tables.get(request_id, ())
        grow = max(0, -(-num_tokens // self.block_size) - len(table))
        return grow + len(self._shared_to_write(table, num_computed, num_tokens))

    def _shared_to_write(self, table: Sequence[int], start: int, end: int) -> list[int]:
        """Indices in ``table`` of shared blocks that positions ``start .. end`` would write."""
        if start >= end:
            return []
        first, last = start // self.block_size, min((end - 1) // self.block_size, len(table) - 1)
        return [i for i in range(first, last + 1) if self.pool.ref_counts[table[i]] > 1]

    def _make_room(self, need: int) -> bool:
        short = need - self.pool.num_free_blocks
        if short > 0 and self.cache is not None:
            self.cache.evict(short)
        return need <= self.pool.num_free_blocks

    def allocate(self, request_id: str, num_tokens: int, num_computed: int = 0,
                 prefix: Sequence[RadixNode] = (), salt: str | None = None) -> list[int] | None:
        new_request = request_id not in self.block_tables
        if new_request and prefix:
            # hold the prefix first, so eviction below cannot take it
            self.block_tables[request_id] = [n.block for n in prefix]
            self.pool.incref(self.block_tables[request_id])
        if not self._make_room(self.blocks_needed(request_id, num_tokens, num_computed)):
            if new_request:
                self.free(request_id)
            return None
        table = self.block_tables.setdefault(request_id, [])
        if new_request:
            self._salts[request_id] = salt
            if self.cache is not None:
                self._cursors[request_id] = _CacheCursor(prefix[-1] if prefix else None, len(prefix))
        for i in self._shared_to_write(table, num_computed, num_tokens):
            (copy,) = self.pool.allocate(1)
            self._copies.append((table[i], copy))
            self.pool.free([table[i]])
            table[i] = copy
        grow = -(-num_tokens // self.block_size) - len(table)
        if grow > 0:
            table.extend(self.pool.allocate(grow))
        return table

    def take_block_copies(self) -> list[tuple[int, int]]:
        """(source, destination) block copies to perform before the next forward pass."""
        copies, self._copies = self._copies, []
        return copies

    def free(self, request_id: str) -> None:
        table = self.block_tables.pop(request_id, None)
        self._cursors.pop(request_id, None)
        self._salts.pop(request_id, None)
        if table:
            # reversed: the tail blocks go back first, so a prefix is the last to be reused
            self.pool.free(reversed(table))

    def truncate(self, request_id: str, num_tokens: int) -> None:
        table = self.block_tables.get(request_id)
        keep = -(-num_tokens // self.block_size)
        if table is None or len(table) <= keep:
            return
        cursor = self._cursors.get(request_id)
        assert cursor is None or cursor.num_blocks <= keep, "cached blocks are computed tokens: never truncated"
        tail = table[keep:]
        del table[keep:]
        self.pool.free(reversed(tail))

    def fork(self, parent_id: str, child_id: str, num_tokens: int | None = None) -> list[int]:
        """The child shares the parent's blocks (those holding its first ``num_tokens`` tokens)."""
        table = self.block_tables[parent_id]
        table = list(table if num_tokens is None else table[: -(-num_tokens // self.block_size)])
        self.pool.incref(table)
        self.block_tables[child_id] = table
        self._salts[child_id] = self._salts.get(parent_id)
        if self.cache is not None:
            parent = self._cursors.get(parent_id, _CacheCursor())
            if parent.num_blocks <= len(table):
                self._cursors[child_id] = _CacheCursor(parent.node, parent.num_blocks)
        return table

    def get_block_table(self, request_id: str) -> list[int]:
        return self.block_tables.get(request_id, [])

    # -- state ------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (cached blocks nobody uses count as free)."""
        idle = self.pool.num_free_blocks + (self.cache.evictable() if self.cache is not None else 0)
        return 1.0 - idle / self.pool.num_blocks

    def check_integrity(self) -> None:
        owners: Counter[int] = Counter()
        for table in self.block_tables.values():
            if len(set(table)) != len(table):
                raise BlockPoolError("a block appears twice in one block table")
            owners.update(table)
        if self.cache is not None:
            cached = self.cache.blocks()
            if len(set(cached)) != len(cached):
                raise BlockPoolError("a block is mapped by two prefix-tree nodes")
            owners.update(cached)
        self.pool.check_integrity(owners)

    def snapshot(self) -> BlockMapSnapshot:
        holders: dict[int, list[str]] = {}
        for rid, table in self.block_tables.items():
            for b in table:
                holders.setdefault(b, []).append(rid)
        cached = set(self.cache.blocks()) if self.cache is not None else set()
        used = tuple(BlockInfo(b, self.pool.ref_counts[b], tuple(holders.get(b, ())), b in cached)
                     for b in range(self.pool.num_blocks) if self.pool.ref_counts[b] > 0)
        free = tuple(b for b in range(self.pool.num_blocks) if self.pool.ref_counts[b] == 0)
        return BlockMapSnapshot(self.pool.num_blocks, self.block_size, free, used)
