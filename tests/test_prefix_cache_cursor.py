"""A request whose cursor sits on a cached node it does not hold (its own block was a private copy,
because a prompt of whole blocks always recomputes its last block) must not leak blocks when that node
is evicted before the request's next block is inserted."""

from pagoda.kv_cache.kv_cache_manager import KVCacheManager


def test_insert_after_the_cursors_node_was_evicted_keeps_the_books() -> None:
    bs = 4
    kv = KVCacheManager(num_blocks=7, block_size=bs, enable_prefix_caching=True)
    prompt = list(range(2 * bs))
    kv.allocate("a", 8)
    kv.cache_blocks("a", prompt, 8)
    kv.free("a")  # both blocks cached, evictable
    prefix = kv.match_prefix(prompt)
    assert len(prefix) == 1  # one token is always left to compute: the second block is recomputed
    kv.allocate("b", 8, 4, prefix)
    kv.cache_blocks("b", prompt, 8)  # b's second block is a private copy; its cursor is on a's node
    kv.allocate("c", 20)  # pressure evicts that node
    assert kv.cache is not None and kv.cache.num_evictions == 1
    kv.free("c")
    tokens = prompt + [9] * bs
    assert kv.allocate("b", 12, 8) is not None
    kv.cache_blocks("b", tokens, 12)
    kv.check_integrity()
    # b's blocks are reachable again: a new request with the same tokens hits all of them
    assert [n.block for n in kv.match_prefix(tokens + [1])] == kv.get_block_table("b")
    kv.free("b")
    kv.check_integrity()
    kv.cache.evict(kv.cache.evictable())
    assert kv.num_free_blocks == 7
