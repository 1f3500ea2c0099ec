"""Short-lived cache of `check` answers on one ingress replica.

An entry is valid until the earlier of its time-to-live and the grant's `expires_at`, so a
cached `true` never outlives a grant. Revokes, expiries, extensions and new grants publish an
invalidation in the same Redis script as the transition, and every replica applies it. An
answer fetched while an invalidation arrived is not stored (the generation check), because it
may predate that invalidation.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def invalidate(self, key: Key) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
