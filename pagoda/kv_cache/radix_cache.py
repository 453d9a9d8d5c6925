"""A radix tree over token ids at block granularity: every cached prefix maps to its KV blocks.

Each node is one full block: its key is the block's ``block_size`` token ids, its value the KV
block that holds them (at those positions, after that prefix). The tree holds one reference on
every block it maps, so a block outlives the request that computed it until it is evicted.
Unreferenced leaves (only the tree holds them) are evicted least-recently-used first; a block
some request still uses is never evicted. ``cache_salt`` gives each tenant a separate tree (its key: ``cache_key.prefix_cache_key``,
the salt and the LoRA adapter).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from pagoda.kv_cache.block_pool import BlockPool

_clock = itertools.count()


@dataclass(eq=False)
class RadixNode:
    key: tuple[int, ...]
    block: int
    parent: RadixNode | None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    last_access: int = 0
    evicted: bool = False  # gone from the tree: a request's cursor may still point at it

    def touch(self) -> None:
        self.last_access = next(_clock)


class RadixCache:
    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self._roots: dict[str | None, RadixNode] = {}
        self.num_cached_blocks = 0
        self.num_evictions = 0  # blocks

    def _root(self, salt: str | None) -> RadixNode:
        if salt not in self._roots:
            self._roots[salt] = RadixNode(key=(), block=-1, parent=None)
        return self._roots[salt]

    def _keys(self, token_ids: Sequence[int], num_blocks: int):
        bs = self.block_size
        for i in range(num_blocks):
            yield tuple(token_ids[i * bs:(i + 1) * bs])

    def match(self, token_ids: Sequence[int], salt: str | None = None, max_blocks: int | None = None
              ) -> list[RadixNode]:
        """Nodes of the longest cached prefix of ``token_ids`` (full blocks only), most recent use
        recorded. The caller must take its own references on the blocks it keeps."""
        limit = len(token_ids) // self.block_size
        if max_blocks is not None:
            limit = min(limit, max_blocks)
        node, path = self._root(salt), []
        for key in self._keys(token_ids, limit):
            child = node.children.get(key)
            if child is None:
                break
            child.touch()
            path.append(child)
            node = child
        return path

    def insert(self, token_ids: Sequence[int], blocks: Sequence[int], salt: str | None = None,
               start_node: RadixNode | None = None, start_block: int = 0) -> RadixNode:
        """Maps the full blocks ``start_block .. len(blocks)`` of ``token_ids`` (continuing from
        ``start_node``, the node of block ``start_block - 1``); returns the last node. A block
        already cached under the same prefix keeps its existing node (the caller's copy stays
        private to the caller)."""
        if start_node is not None and start_node.evicted:
            # the caller's cursor sat on a node it did not hold (its own block was a private copy of a cached
            # one) and eviction took it: insert the whole prefix again, or the blocks below would hang off a
            # detached node and leak
            start_node, start_block = None, 0
        node = start_node if start_node is not None else self._root(salt)
        bs = self.block_size
        for i in range(start_block, len(blocks)):
            key = tuple(token_ids[i * bs:(i + 1) * bs])
            child = node.children.get(key)
            if child is None:
                child = RadixNode(key=key, block=blocks[i], parent=node)
                node.children[key] = child
                self.pool.incref([blocks[i]])
                self.pool.set_cached(blocks[i], True)
                self.num_cached_blocks += 1
            child.touch()
            node = child
        return node

    def evictable(self) -> int:
        """Blocks only the tree holds (what eviction could free at most)."""
        return self.pool.num_evictable

    def evict(self, num_blocks: int) -> int:
        """Frees up to ``num_blocks`` blocks from unreferenced leaves, least recently used first;
        a parent whose last child goes becomes a candidate in turn. Returns blocks freed."""
        heap = [(n.last_access, id(n), n) for n in self._nodes() if not n.children and self._unused(n)]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < num_blocks:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            del parent.children[node.key]
            node.evicted = True
            self.pool.set_cached(node.block, False)
            self.pool.free([node.block])
            self.num_cached_blocks -= 1
            self.num_evictions += 1
            freed += 1
            if parent.parent is not None and not parent.children and self._unused(parent):
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return freed

    def _unused(self, node: RadixNode) -> bool:
        return self.pool.ref_counts[node.block] == 1

    def _nodes(self):
        stack = [c for root in self._roots.values() for c in root.children.values()]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def blocks(self) -> list[int]:
        """Every block the tree holds a reference on (for integrity checks and snapshots)."""
        return [n.block for n in self._nodes()]
