import numpy as np

from actors.domain.columns import entitlement_keys
from cluster.check_cache import CheckCache

KEY = ("alice", "redis://target/orders", "read")


def test_cached_true_never_outlives_grant():
    cache = CheckCache(ttl_ms=10_000)
    cache.put(KEY, allowed=True, grant_id="g", expires_ms=1_500, now_ms=1_000, generation=cache.generation)
    assert cache.get(KEY, 1_499).allowed
    assert cache.get(KEY, 1_500) is None


def test_negative_answer_expires_with_ttl():
    cache = CheckCache(ttl_ms=100)
    cache.put(KEY, allowed=False, grant_id=None, expires_ms=None, now_ms=0, generation=cache.generation)
    assert cache.get(KEY, 99) is not None
    assert cache.get(KEY, 100) is None


def test_invalidation_drops_entry():
    cache = CheckCache(ttl_ms=1_000)
    cache.put(KEY, allowed=True, grant_id="g", expires_ms=5_000, now_ms=0, generation=cache.generation)
    cache.invalidate(KEY)
    assert cache.get(KEY, 1) is None


def test_answer_fetched_across_invalidation_not_stored():
    cache = CheckCache(ttl_ms=1_000)
    generation = cache.generation
    cache.invalidate(KEY)
    cache.put(KEY, allowed=True, grant_id="g", expires_ms=5_000, now_ms=0, generation=generation)
    assert cache.get(KEY, 1) is None


def test_disabled_cache_stores_nothing():
    cache = CheckCache(ttl_ms=0)
    cache.put(KEY, allowed=True, grant_id="g", expires_ms=5_000, now_ms=0, generation=cache.generation)
    assert cache.get(KEY, 1) is None


COLUMN_KEYS = entitlement_keys(["alice", "bob"], ["redis://target/orders"] * 2, ["read", "read"])


def test_columns_true_valid_until_expiry():
    cache = CheckCache(ttl_ms=10_000)
    cache.put_many(COLUMN_KEYS, np.array([1_500, 0]), now_ms=1_000, generation=cache.generation)
    hit, expires_ms = cache.get_many(COLUMN_KEYS, 1_499)
    assert hit.tolist() == [True, True]
    assert expires_ms.tolist() == [1_500, 0]
    hit, expires_ms = cache.get_many(COLUMN_KEYS, 1_500)
    assert hit.tolist() == [False, True]
    assert expires_ms.tolist() == [0, 0]


def test_columns_negative_expires_with_ttl():
    cache = CheckCache(ttl_ms=100)
    cache.put_many(COLUMN_KEYS, np.array([0, 0]), now_ms=0, generation=cache.generation)
    assert cache.get_many(COLUMN_KEYS, 99)[0].tolist() == [True, True]
    assert cache.get_many(COLUMN_KEYS, 100)[0].tolist() == [False, False]


def test_columns_invalidation_drops_key():
    cache = CheckCache(ttl_ms=1_000)
    cache.put_many(COLUMN_KEYS, np.array([5_000, 0]), now_ms=0, generation=cache.generation)
    cache.invalidate(("alice", "redis://target/orders", "read"))
    assert cache.get_many(COLUMN_KEYS, 1)[0].tolist() == [False, True]


def test_columns_fetched_across_invalidation_not_stored():
    cache = CheckCache(ttl_ms=1_000)
    generation = cache.generation
    cache.invalidate(("carol", "db", "read"))
    cache.put_many(COLUMN_KEYS, np.array([5_000, 0]), now_ms=0, generation=generation)
    assert cache.get_many(COLUMN_KEYS, 1)[0].tolist() == [False, False]


def test_columns_disabled_cache_stores_nothing():
    cache = CheckCache(ttl_ms=0)
    cache.put_many(COLUMN_KEYS, np.array([5_000, 0]), now_ms=0, generation=cache.generation)
    assert cache.get_many(COLUMN_KEYS, 1)[0].tolist() == [False, False]
    assert len(cache) == 0


def test_columns_emptied_when_full():
    cache = CheckCache(ttl_ms=1_000, max_entries=3)
    cache.put_many(COLUMN_KEYS, np.array([5_000, 0]), now_ms=0, generation=cache.generation)
    more = entitlement_keys(["carol", "dave"], ["db", "db"], ["read", "read"])
    cache.put_many(more, np.array([0, 0]), now_ms=0, generation=cache.generation)
    assert len(cache) == 2
    assert cache.get_many(COLUMN_KEYS, 1)[0].tolist() == [False, False]
    assert cache.get_many(more, 1)[0].tolist() == [True, True]


def test_columns_count_hits_and_misses():
    cache = CheckCache(ttl_ms=1_000)
    cache.put_many(COLUMN_KEYS[:1], np.array([5_000]), now_ms=0, generation=cache.generation)
    cache.get_many(COLUMN_KEYS, 1)
    assert cache.hits == 1
    assert cache.misses == 1
