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
