"""Grant use cases: create, revoke, extend, reach the deadline, finish removal. Pure planning."""

from __future__ import annotations

from actors.domain.ids import new_grant_id
from actors.domain.lifecycle import GrantRecord, transition_grant
from actors.ledger.plan import (
    GRANTS_INDEX,
    Plan,
    entitlement_member,
    principal_grants_key,
    shard_key,
)
from jitgate.errors import Conflict, InvalidInput

SYSTEM = "system"


def plan_new_grant(
    plan: Plan, *, shard: int, request_id: str, principal: str, resource: str, role: str, provisioner: str,
    duration_s: int, now_ms: int, actor: str, key_id: str,
) -> GrantRecord:
    blank = GrantRecord(
        id=new_grant_id(now_ms), request_id=request_id, principal=principal, resource=resource, role=role,
        provisioner=provisioner, granted_ms=now_ms, expires_ms=now_ms + duration_s * 1000,
    )
    grant, entry = transition_grant(
        blank, "grant", now_ms=now_ms, actor=actor, key_id=key_id, message=f"granted for {duration_s} s"
    )
    plan.add_grant(None, grant, entry)
    plan.zadd.append((shard_key(shard, "open_grants"), grant.expires_ms, grant.id))
    plan.zadd.append((GRANTS_INDEX, now_ms, grant.id))
    plan.zadd.append((principal_grants_key(principal), now_ms, grant.id))
    plan.invalidate.append(entitlement_member(principal, resource, role))
    return grant


def plan_end(grant: GrantRecord, trigger: str, *, shard: int, now_ms: int, actor: str, key_id: str, reason: str) -> tuple[Plan, GrantRecord]:
    """Plan `deadline` or `revoke`: the grant moves to revoking, and from then on `check` returns false."""
    plan = Plan()
    moved, entry = transition_grant(
        grant, trigger, now_ms=now_ms, actor=actor, key_id=key_id, message=reason, end_reason=reason
    )
    plan.add_grant(grant, moved, entry)
    plan.invalidate.append(entitlement_member(*grant.entitlement))
    return plan, moved


def plan_removed(grant: GrantRecord, *, shard: int, now_ms: int, message: str) -> tuple[Plan, GrantRecord]:
    plan = Plan()
    moved, entry = transition_grant(grant, "removed", now_ms=now_ms, actor=SYSTEM, key_id=SYSTEM, message=message)
    plan.add_grant(grant, moved, entry)
    plan.zrem.append((shard_key(shard, "open_grants"), grant.id))
    return plan, moved


def plan_extend(
    grant: GrantRecord, *, shard: int, duration_s: int, now_ms: int, actor: str, key_id: str, reason: str
) -> tuple[Plan, GrantRecord]:
    new_expires_ms = now_ms + duration_s * 1000
    if new_expires_ms <= grant.expires_ms:
        raise InvalidInput(
            f"duration_s {duration_s} would not extend grant {grant.id}: it already runs until epoch ms {grant.expires_ms}",
            field="duration_s",
            value=duration_s,
        )
    if grant.expires_ms <= now_ms:
        raise Conflict(f"grant {grant.id} has reached its deadline and can no longer be extended", grant_id=grant.id)
    plan = Plan()
    moved, entry = transition_grant(
        grant, "extend", now_ms=now_ms, actor=actor, key_id=key_id, message=reason, expires_ms=new_expires_ms
    )
    plan.add_grant(grant, moved, entry)
    plan.zadd.append((shard_key(shard, "open_grants"), new_expires_ms, grant.id))
    plan.invalidate.append(entitlement_member(*grant.entitlement))
    return plan, moved
