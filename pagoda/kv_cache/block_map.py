"""A compact block map of the KV cache for a live dashboard, cheap enough to take ten times a second.

``KVCacheManager.snapshot()`` lists every used block as a record; this view carries the same facts
as one character per block plus one owner index per block, built in one pass over the pool's
reference counts and the block tables (no walk of the prefix tree).
"""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.kv_cache.kv_cache_manager import KVCacheManager

FREE = "."  # nobody holds it
EVICTABLE = "c"  # only the prefix cache holds it: reusable by a hit, or evicted when the pool runs short
OWNED = "o"  # held by requests, not (yet) in the prefix cache
OWNED_CACHED = "h"  # held by requests and mapped by the prefix cache (a hit, or a block already inserted)

# indexed by min(ref count, 2) + 3 * cached: a cached block with one reference is held by the tree alone
_CODES = (FREE + OWNED + OWNED + FREE + EVICTABLE + OWNED_CACHED).encode("ascii")


@dataclass(frozen=True)
class CompactBlockMap:
    num_blocks: int
    block_size: int
    state: str  # one of FREE / EVICTABLE / OWNED / OWNED_CACHED per block
    owner: list[int]  # per block: index into ``owners`` of the first request holding it, else -1
    owners: list[str]  # request ids, in the order their block tables were created

    def count(self, state: str) -> int:
        return self.state.count(state)


def compact_block_map(kv: KVCacheManager) -> CompactBlockMap:
    pool = kv.pool
    n = pool.num_blocks
    refs = pool.ref_counts
    cached = pool.cached_flags
    owners = list(kv.block_tables)
    owner = [-1] * n
    for i, table in enumerate(kv.block_tables.values()):
        for b in table:
            if owner[b] < 0:
                owner[b] = i
    codes = bytes(_CODES[min(r, 2) + 3 * (c > 0)] for r, c in zip(refs, cached))
    return CompactBlockMap(n, kv.block_size, codes.decode("ascii"), owner, owners)
