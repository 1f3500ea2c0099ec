"""Batch checks: columns of (principal, resource, role) routed to the ledger shards as packed columns.

The per-check work runs in C (`str.split`, `map` over dict methods, numpy) rather than in a
Python loop, because a batch holds up to `MAX_ITEMS_PER_BATCH` checks.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from actors.domain.columns import SEPARATOR, Column, entitlement_keys, same_lengths, unpack_column
from actors.domain.directory import PrincipalDirectory
from actors.ledger import ledger_shards
from cluster.check_cache import CheckCache
from jitgate.errors import InvalidInput
from jitgate.models import MAX_ITEMS_PER_BATCH


class PrincipalRoutes:
    """Memo of the canonical id and the ledger shard of each principal name as callers spell it.

    Both are pure functions of the name, because a replica's directory and shard count never
    change. The memo is emptied before it would grow past `max_entries`.
    """

    def __init__(self, directory: PrincipalDirectory, shards: int, *, max_entries: int = 2 * MAX_ITEMS_PER_BATCH) -> None:
        self.directory = directory
        self.shards = shards
        self.max_entries = max_entries
        self._canonical: dict[str, str] = {}
        self._shard: dict[str, int] = {}

    def route(self, names: list[str]) -> tuple[list[str], np.ndarray]:
        """Return the canonical id of each name and its ledger shard (int64 array)."""
        canonical = list(map(self._canonical.get, names))
        if None in canonical:
            self._add(names)
            canonical = list(map(self._canonical.__getitem__, names))
        shards = np.fromiter(map(self._shard.__getitem__, names), np.int64, count=len(names))
        return canonical, shards

    def _add(self, names: list[str]) -> None:
        new = [name for name in dict.fromkeys(names) if name not in self._canonical]
        if len(self._canonical) + len(new) > self.max_entries:
            self._canonical.clear()
            self._shard.clear()
            new = list(dict.fromkeys(names))
        canonical = self.directory.canonical_many(new)
        self._canonical.update(zip(new, canonical))
        self._shard.update(zip(new, ledger_shards(canonical, self.shards).tolist()))

    def __len__(self) -> int:
        return len(self._canonical)


class BatchChecks:
    """Run many checks against the replica's check cache, and the rest with one call per ledger shard."""

    def __init__(self, backends: Any, directory: PrincipalDirectory, shards: int, now_ms: Callable[[], int],
                 cache: CheckCache) -> None:
        self.backends = backends
        self.routes = PrincipalRoutes(directory, shards)
        self.cache = cache
        self._now_ms = now_ms

    async def check(self, principals: Column, resources: Column, roles: Column) -> tuple[np.ndarray, np.ndarray]:
        """Return `allowed` (bool array) and `expires_at_ms` (int64 array, 0 where no active grant was found)."""
        columns = {
            "principals": unpack_column(principals, "principals"),
            "resources": unpack_column(resources, "resources"),
            "roles": unpack_column(roles, "roles"),
        }
        count = same_lengths(columns)
        if count > MAX_ITEMS_PER_BATCH:
            raise InvalidInput(
                f"a check batch may contain at most {MAX_ITEMS_PER_BATCH} checks, got {count}. Split it into smaller batches.",
                field="principals", value=count, limit=MAX_ITEMS_PER_BATCH,
            )
        canonical, shard_of = self.routes.route(columns["principals"])
        keys = entitlement_keys(canonical, columns["resources"], columns["roles"])

        now_ms = self._now_ms()
        hit, expires_ms = self.cache.get_many(keys, now_ms)
        missing = np.flatnonzero(~hit)
        if len(missing):
            generation = self.cache.generation
            missing_keys = _take(keys, missing)
            missing_shards = shard_of[missing]
            found = np.zeros(len(missing), np.int64)
            await asyncio.gather(*(
                self._ask_shard(shard, np.flatnonzero(missing_shards == shard), missing_keys, found)
                for shard in np.unique(missing_shards).tolist()
            ))
            expires_ms[missing] = found
            self.cache.put_many(missing_keys, found, now_ms=now_ms, generation=generation)
        # Compared again here, so a result from the cache or a ledger is never true past its expiry.
        return expires_ms > self._now_ms(), expires_ms

    async def _ask_shard(self, shard: int, indexes: np.ndarray, keys: Sequence[str], expires_ms: np.ndarray) -> None:
        """Send the shard the keys at `indexes` as a packed column and write its results into `expires_ms`."""
        found = await self.backends.ledger_read(shard, "check_entitlements", SEPARATOR.join(_take(keys, indexes)))
        if len(found) != len(indexes):
            # A value with the separator in it splits into two keys in the ledger.
            raise InvalidInput(
                f"ledger shard {shard} returned {len(found)} results for {len(indexes)} checks: "
                "a value contains the control character U+001F",
                field="principals",
            )
        expires_ms[indexes] = found


def _take(values: Sequence[str], indexes: np.ndarray) -> Sequence[str]:
    """Return the values at `indexes`, in C rather than a Python loop."""
    if len(indexes) == len(values):
        return values
    if len(indexes) == 1:
        return [values[int(indexes[0])]]
    return operator.itemgetter(*indexes.tolist())(values)
