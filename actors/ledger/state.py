"""In-memory state of one ledger shard: open requests, live grants, entitlements and deadlines.

It mirrors what Redis holds for the shard and changes only through `apply`, after Redis
accepted the plan.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from itertools import repeat

import numpy as np

from actors.domain.columns import FIELD_SEPARATOR
from actors.domain.lifecycle import GrantRecord, RequestRecord
from actors.ledger.plan import Plan
from jitgate.models import GrantState, RequestState

Entitlement = tuple[str, str, str]

MAX_TRACKED_VERSIONS = 200_000


class ShardState:
    def __init__(self) -> None:
        self.pending: dict[str, RequestRecord] = {}
        self.grants: dict[str, GrantRecord] = {}  # active and revoking
        self.entitlements: dict[Entitlement, set[str]] = {}  # active grant ids only
        # Latest expires_ms of the active grants of each entitlement in `entitlements`, by
        # `entitlement_keys` key, for batch checks.
        self.latest_expiry: dict[str, int] = {}
        self._expiry_heap: list[tuple[int, str]] = []
        self._review_heap: list[tuple[int, str]] = []
        # Last applied version per record id, so a late copy of an older version is ignored.
        self.versions: dict[str, int] = {}

    def apply(self, plan: Plan) -> None:
        for _, request in plan.requests:
            self.put_request(request)
        for _, grant in plan.grants:
            self.put_grant(grant)

    def known_version(self, record_id: str) -> int:
        return self.versions.get(record_id, 0)

    def _accept(self, record_id: str, version: int) -> bool:
        if self.versions.get(record_id, 0) > version:
            return False
        if len(self.versions) >= MAX_TRACKED_VERSIONS:
            # Keep the versions of live records; ended ones can no longer be changed.
            live = set(self.pending) | set(self.grants)
            self.versions = {k: v for k, v in self.versions.items() if k in live}
        self.versions[record_id] = version
        return True

    def put_request(self, request: RequestRecord) -> None:
        if not self._accept(request.id, request.version):
            return
        if request.state is RequestState.PENDING:
            self.pending[request.id] = request
            if request.review_deadline_ms is not None:
                heapq.heappush(self._review_heap, (request.review_deadline_ms, request.id))
        else:
            self.pending.pop(request.id, None)

    def put_grant(self, grant: GrantRecord) -> None:
        if not self._accept(grant.id, grant.version):
            return
        holders = self.entitlements.setdefault(grant.entitlement, set())
        if grant.state is GrantState.ACTIVE:
            self.grants[grant.id] = grant
            holders.add(grant.id)
            heapq.heappush(self._expiry_heap, (grant.expires_ms, grant.id))
        elif grant.state is GrantState.REVOKING:
            self.grants[grant.id] = grant
            holders.discard(grant.id)
        else:
            self.grants.pop(grant.id, None)
            holders.discard(grant.id)
        key = FIELD_SEPARATOR.join(grant.entitlement)
        if holders:
            self.latest_expiry[key] = max(self.grants[holder].expires_ms for holder in holders)
        else:
            self.entitlements.pop(grant.entitlement, None)
            self.latest_expiry.pop(key, None)

    def requeue_expiry(self, grant: GrantRecord) -> None:
        heapq.heappush(self._expiry_heap, (grant.expires_ms, grant.id))

    def active_grant(self, entitlement: Entitlement, now_ms: int) -> GrantRecord | None:
        """Return the active grant on an entitlement that expires last, or None once every deadline passed."""
        best: GrantRecord | None = None
        for grant_id in self.entitlements.get(entitlement, ()):
            grant = self.grants[grant_id]
            if grant.expires_ms > now_ms and (best is None or grant.expires_ms > best.expires_ms):
                best = grant
        return best

    def active_expiries(self, keys: Sequence[str], now_ms: int) -> np.ndarray:
        """Return the expires_ms of `active_grant` for each entitlement key as an int64 array, 0 where there is none.

        Keys are built by `actors.domain.columns.entitlement_keys`. The lookups run in C (`map`
        over `dict.get`), without a Python call per key.
        """
        found = np.fromiter(map(self.latest_expiry.get, keys, repeat(0)), np.int64, count=len(keys))
        found[found <= now_ms] = 0
        return found

    def has_other_active(self, entitlement: Entitlement, grant_id: str) -> bool:
        return any(other != grant_id for other in self.entitlements.get(entitlement, ()))

    def next_deadline_ms(self) -> int | None:
        deadlines = [heap[0][0] for heap in (self._expiry_heap, self._review_heap) if heap]
        return min(deadlines) if deadlines else None

    def due_grants(self, now_ms: int) -> list[GrantRecord]:
        """Pop active grants whose deadline passed; stale heap entries (extended or ended grants) are dropped."""
        due = []
        while self._expiry_heap and self._expiry_heap[0][0] <= now_ms:
            expires_ms, grant_id = heapq.heappop(self._expiry_heap)
            grant = self.grants.get(grant_id)
            if grant is not None and grant.state is GrantState.ACTIVE and grant.expires_ms == expires_ms:
                due.append(grant)
        return due

    def due_requests(self, now_ms: int) -> list[RequestRecord]:
        due = []
        while self._review_heap and self._review_heap[0][0] <= now_ms:
            deadline_ms, request_id = heapq.heappop(self._review_heap)
            request = self.pending.get(request_id)
            if request is not None and request.review_deadline_ms == deadline_ms:
                due.append(request)
        return due

    def revoking(self) -> list[GrantRecord]:
        return [g for g in self.grants.values() if g.state is GrantState.REVOKING]
