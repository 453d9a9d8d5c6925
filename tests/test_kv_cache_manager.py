import pytest

from pagoda.kv_cache.block_pool import BlockPool, BlockPoolError
from pagoda.kv_cache.kv_cache_manager import KVCacheManager


def test_allocate_grows_by_blocks_and_free_returns_all():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    assert kv.allocate("a", 5) == kv.get_block_table("a") and len(kv.get_block_table("a")) == 2
    assert len(kv.allocate("a", 8)) == 2  # still fits in 2 blocks
    assert len(kv.allocate("a", 9)) == 3
    kv.allocate("b", 16)
    assert kv.num_free_blocks == 1
    assert kv.allocate("c", 8) is None  # short: nothing changes
    assert "c" not in kv.block_tables and kv.num_free_blocks == 1
    kv.check_integrity()
    kv.free("a")
    kv.free("a")  # unknown now: a no-op
    kv.free("b")
    assert kv.num_free_blocks == 8 and kv.usage == 0.0
    kv.check_integrity()


def test_fork_shares_blocks_and_refcounts():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.allocate("p", 8)
    kv.fork("p", "c")
    assert kv.pool.ref_counts[kv.get_block_table("p")[0]] == 2
    kv.check_integrity()
    kv.free("p")
    assert kv.num_free_blocks == 2  # still owned by the child
    kv.free("c")
    assert kv.num_free_blocks == 4
    kv.check_integrity()


def test_pool_detects_double_free_and_bad_counts():
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(BlockPoolError):
        pool.free([b])
    with pytest.raises(BlockPoolError):
        pool.allocate(3)
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.allocate("x", 4)
    kv.pool.ref_counts[kv.get_block_table("x")[0]] += 1  # a leak
    with pytest.raises(BlockPoolError):
        kv.check_integrity()
