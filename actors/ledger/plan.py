"""A plan: everything one ledger transition writes, applied to Redis as one atomic script call.

Building a plan is pure. `redis_store.LedgerStore.commit` turns it into one Lua call, and the
ledger applies it to its in-memory state only after Redis accepted it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.domain.audit import canonical_json, chain_hash
from actors.domain.lifecycle import AuditEntry, GrantRecord, RequestRecord

KEY_PREFIX = "jg:"


def request_key(request_id: str) -> str:
    return f"{KEY_PREFIX}req:{request_id}"


def grant_key(grant_id: str) -> str:
    return f"{KEY_PREFIX}grant:{grant_id}"


def idempotency_key(submitter: str, key: str) -> str:
    return f"{KEY_PREFIX}idem:{submitter}:{key}"


def shard_key(shard: int, name: str) -> str:
    return f"{KEY_PREFIX}s{shard}:{name}"


INVALIDATION_CHANNEL = f"{KEY_PREFIX}invalidate"
REQUESTS_INDEX = f"{KEY_PREFIX}requests"
PENDING_INDEX = f"{KEY_PREFIX}requests:pending"
GRANTS_INDEX = f"{KEY_PREFIX}grants"


def principal_requests_key(principal: str) -> str:
    return f"{KEY_PREFIX}requests:principal:{principal}"


def principal_grants_key(principal: str) -> str:
    return f"{KEY_PREFIX}grants:principal:{principal}"


def entitlement_member(principal: str, resource: str, role: str) -> str:
    return f"{principal}\x1f{resource}\x1f{role}"


@dataclass
class Plan:
    requests: list[tuple[RequestRecord | None, RequestRecord]] = field(default_factory=list)
    grants: list[tuple[GrantRecord | None, GrantRecord]] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    idempotency: tuple[str, str] | None = None
    zadd: list[tuple[str, int, str]] = field(default_factory=list)
    zrem: list[tuple[str, str]] = field(default_factory=list)
    invalidate: list[str] = field(default_factory=list)

    def add_request(self, old: RequestRecord | None, new: RequestRecord, entry: AuditEntry) -> None:
        self.requests.append((old, new))
        self.audit.append(entry)

    def add_grant(self, old: GrantRecord | None, new: GrantRecord, entry: AuditEntry) -> None:
        self.grants.append((old, new))
        self.audit.append(entry)


def encode_plan(plan: Plan, *, shard: int, head: str) -> tuple[str, str]:
    """Serialize a plan for the commit script; returns (argument JSON, new chain head)."""
    checks: list[list[Any]] = []
    puts: list[list[Any]] = []
    for old, new in plan.requests:
        key = request_key(new.id)
        checks.append([key, old.version if old else 0])
        puts.append([key, new.version, canonical_json(new.to_dict())])
    for old, new in plan.grants:
        key = grant_key(new.id)
        checks.append([key, old.version if old else 0])
        puts.append([key, new.version, canonical_json(new.to_dict())])
    events = []
    prev = head
    for entry in plan.audit:
        event_json = canonical_json({**entry.to_dict(), "shard": shard})
        digest = chain_hash(prev, event_json)
        events.append([event_json, prev, digest])
        prev = digest
    argument = {
        "head_key": shard_key(shard, "head"),
        "expected_head": head,
        "new_head": prev,
        "stream": shard_key(shard, "audit"),
        "events": events,
        "checks": checks,
        "puts": puts,
        "idem": list(plan.idempotency) if plan.idempotency else False,
        "zadd": [list(z) for z in plan.zadd],
        "zrem": [list(z) for z in plan.zrem],
        "publish": [[INVALIDATION_CHANNEL, member] for member in plan.invalidate],
    }
    return canonical_json(argument), prev
