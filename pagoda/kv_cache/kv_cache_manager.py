"""Per-request block tables over a shared BlockPool."""

from __future__ import annotations

from collections import Counter

from pagoda.kv_cache.block_pool import BlockPool, BlockPoolError


class KVCacheManager:
    """Owns every request's block table.

    Verbs:
    - ``allocate(request_id, num_tokens)``: grow (or create) the request's table so it holds
      ``num_tokens`` tokens in total; returns the table, or ``None`` when the pool is short, in
      which case nothing changed (the scheduler then preempts someone and retries).
    - ``append(request_id, num_tokens)``: the same for a request that already has a table.
    - ``free(request_id)``: gives every block of the request back at once (finish, abort, failure,
      preemption). Freeing an unknown request is a no-op, so cleanup paths may call it freely.
    - ``fork(parent_id, child_id)``: the child shares all of the parent's blocks (copy-on-write
      is the prefix cache's business).
    Block tables returned are live lists: valid until the next call that changes that request.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.block_tables: dict[str, list[int]] = {}

    def blocks_needed(self, request_id: str, num_tokens: int) -> int:
        have = len(self.block_tables.get(request_id, ()))
        return max(0, -(-num_tokens // self.block_size) - have)

    def can_allocate(self, request_id: str, num_tokens: int) -> bool:
        return self.blocks_needed(request_id, num_tokens) <= self.pool.num_free_blocks

    def allocate(self, request_id: str, num_tokens: int) -> list[int] | None:
        need = self.blocks_needed(request_id, num_tokens)
        if need > self.pool.num_free_blocks:
            return None
        table = self.block_tables.setdefault(request_id, [])
        if need:
            table.extend(self.pool.allocate(need))
        return table

    def append(self, request_id: str, num_tokens: int) -> list[int] | None:
        if request_id not in self.block_tables:
            raise BlockPoolError(f"request {request_id!r} has no block table")
        return self.allocate(request_id, num_tokens)

    def free(self, request_id: str) -> None:
        table = self.block_tables.pop(request_id, None)
        if table:
            # reversed: the tail blocks go back first, so a prefix is the last to be reused
            self.pool.free(reversed(table))

    def fork(self, parent_id: str, child_id: str) -> list[int]:
        table = list(self.block_tables[parent_id])
        self.pool.incref(table)
        self.block_tables[child_id] = table
        return table

    def get_block_table(self, request_id: str) -> list[int]:
        return self.block_tables.get(request_id, [])

    @property
    def usage(self) -> float:
        return self.pool.usage

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def check_integrity(self) -> None:
        owners: Counter[int] = Counter()
        for table in self.block_tables.values():
            if len(set(table)) != len(table):
                raise BlockPoolError("a block appears twice in one block table")
            owners.update(table)
        self.pool.check_integrity(owners)
