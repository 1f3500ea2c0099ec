"""Short-lived cache of `check` answers on one ingress replica.

An entry is valid until the earlier of its time-to-live and the grant's `expires_at`, so a
cached `true` never outlives a grant. Revokes, expiries, extensions and new grants publish an
invalidation in the same Redis script as the transition, and every replica applies it. An
answer fetched while an invalidation arrived is not stored (the generation check), because it
may predate that invalidation.

Batch checks use a second, columnar table keyed by `entitlement_keys` strings, with the same
time-to-live, generation and invalidations. Its entries store the expiry only, and the caller
compares it with its clock on every read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from actors.domain.columns import FIELD_SEPARATOR

Key = tuple[str, str, str]


@dataclass(frozen=True)
class CachedCheck:
    allowed: bool
    grant_id: str | None
    expires_ms: int | None
    valid_until_ms: int


class CheckCache:
    def __init__(self, ttl_ms: int, *, max_entries: int = 200_000) -> None:
        self.ttl_ms = ttl_ms
        self.max_entries = max_entries
        self.generation = 0
        self.enabled = ttl_ms > 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[Key, CachedCheck] = {}
        # The columnar table: expires_ms (0 for none) and valid_until_ms by entitlement key.
        self._expires_by_key: dict[str, int] = {}
        self._valid_until_by_key: dict[str, int] = {}

    def get(self, key: Key, now_ms: int) -> CachedCheck | None:
        entry = self._entries.get(key) if self.enabled else None
        if entry is None or now_ms >= entry.valid_until_ms:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: Key, *, allowed: bool, grant_id: str | None, expires_ms: int | None, now_ms: int, generation: int) -> None:
        if not self.enabled or generation != self.generation:
            return
        valid_until_ms = now_ms + self.ttl_ms
        if allowed and expires_ms is not None:
            valid_until_ms = min(valid_until_ms, expires_ms)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = CachedCheck(allowed, grant_id, expires_ms, valid_until_ms)

    def get_many(self, keys: Sequence[str], now_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (hit, expires_ms) arrays for entitlement keys, with expires_ms 0 where there is no hit."""
        count = len(keys)
        if not self.enabled or not self._valid_until_by_key:
            self.misses += count
            return np.zeros(count, np.bool_), np.zeros(count, np.int64)
        valid_until_ms = np.fromiter(map(self._valid_until_by_key.get, keys, repeat(0)), np.int64, count=count)
        hit = valid_until_ms > now_ms
        expires_ms = np.fromiter(map(self._expires_by_key.get, keys, repeat(0)), np.int64, count=count)
        expires_ms[~hit] = 0
        hits = int(hit.sum())
        self.hits += hits
        self.misses += count - hits
        return hit, expires_ms

    def put_many(self, keys: Sequence[str], expires_ms: np.ndarray, *, now_ms: int, generation: int) -> None:
        """Store the ledger's expires_ms (0 for none) of entitlement keys, fetched at or after `now_ms`."""
        if not self.enabled or generation != self.generation or not len(keys):
            return
        ttl_end_ms = now_ms + self.ttl_ms
        # An allowed result is valid until the grant's expiry at the latest.
        valid_until_ms = np.where(expires_ms > now_ms, np.minimum(expires_ms, ttl_end_ms), ttl_end_ms)
        if len(self._expires_by_key) + len(keys) > self.max_entries:
            self._expires_by_key.clear()
            self._valid_until_by_key.clear()
        self._expires_by_key.update(zip(keys, expires_ms.tolist()))
        self._valid_until_by_key.update(zip(keys, valid_until_ms.tolist()))

    def invalidate(self, key: Key) -> None:
        self.generation += 1
        self._entries.pop(key, None)
        column_key = FIELD_SEPARATOR.join(key)
        self._expires_by_key.pop(column_key, None)
        self._valid_until_by_key.pop(column_key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._expires_by_key.clear()
        self._valid_until_by_key.clear()

    def __len__(self) -> int:
        return len(self._entries) + len(self._expires_by_key)
