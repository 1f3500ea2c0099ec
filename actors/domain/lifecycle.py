"""Request and grant lifecycles: one transition function is the only code that assigns a state.

Request: (new) -> pending | approved | denied; pending -> approved | denied | cancelled | expired.
Grant:   (new) -> active; active -> active (extend) | revoking; revoking -> expired | revoked.
A grant passes through `revoking` while its provisioner removes the access, and reaches `expired`
(deadline) or `revoked` (ended early) only after the removal succeeded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from jitgate.errors import Conflict
from jitgate.models import GrantState, RequestState

REQUEST_MOVES: dict[tuple[RequestState | None, str], RequestState] = {
    (None, "auto_approve"): RequestState.APPROVED,
    (None, "policy_deny"): RequestState.DENIED,
    (None, "route_to_review"): RequestState.PENDING,
    (RequestState.PENDING, "approve"): RequestState.APPROVED,
    (RequestState.PENDING, "deny"): RequestState.DENIED,
    (RequestState.PENDING, "cancel"): RequestState.CANCELLED,
    (RequestState.PENDING, "review_window_passed"): RequestState.EXPIRED,
    # A review that does not reach the threshold yet keeps the request pending.
    (RequestState.PENDING, "add_review"): RequestState.PENDING,
}

GRANT_MOVES: dict[tuple[GrantState | None, str], GrantState] = {
    (None, "grant"): GrantState.ACTIVE,
    (GrantState.ACTIVE, "extend"): GrantState.ACTIVE,
    (GrantState.ACTIVE, "deadline"): GrantState.REVOKING,
    (GrantState.ACTIVE, "revoke"): GrantState.REVOKING,
    (GrantState.REVOKING, "removed"): GrantState.EXPIRED,  # or REVOKED, by `ending`
}

TERMINAL_REQUEST_STATES = frozenset({RequestState.APPROVED, RequestState.DENIED, RequestState.CANCELLED, RequestState.EXPIRED})
TERMINAL_GRANT_STATES = frozenset({GrantState.EXPIRED, GrantState.REVOKED})


@dataclass(frozen=True)
class RequestRecord:
    id: str
    submitter: str
    principal: str
    resource: str
    role: str
    duration_s: int
    reason: str
    context: dict[str, Any]
    decision: dict[str, Any]
    created_ms: int
    updated_ms: int
    review_deadline_ms: int | None
    idempotency_key: str | None
    body_sha256: str
    key_id: str
    state: RequestState | None = None
    reviews: tuple[dict[str, Any], ...] = ()
    grant_id: str | None = None
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a dict that shares the nested dicts of the record; do not modify those."""
        data = _fields_of(self)
        data["state"] = self.state.value if self.state else None
        data["reviews"] = list(self.reviews)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        values = dict(data)
        values["state"] = RequestState(values["state"]) if values.get("state") else None
        values["reviews"] = tuple(values.get("reviews", ()))
        return cls(**values)


@dataclass(frozen=True)
class GrantRecord:
    id: str
    request_id: str
    principal: str
    resource: str
    role: str
    provisioner: str
    granted_ms: int
    expires_ms: int
    state: GrantState | None = None
    ending: str | None = None  # "expired" or "revoked" while revoking
    ended_ms: int | None = None
    end_reason: str | None = None
    version: int = 0

    @property
    def entitlement(self) -> tuple[str, str, str]:
        return (self.principal, self.resource, self.role)

    def to_dict(self) -> dict[str, Any]:
        data = _fields_of(self)
        data["state"] = self.state.value if self.state else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrantRecord:
        values = dict(data)
        values["state"] = GrantState(values["state"]) if values.get("state") else None
        return cls(**values)


@dataclass(frozen=True)
class AuditEntry:
    """One audit event, before it is chained and stored."""

    at_ms: int
    actor: str
    key_id: str
    kind: str  # "request" or "grant"
    subject: str
    trigger: str
    from_state: str | None
    to_state: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a dict that shares `data` with the entry; do not modify it."""
        return _fields_of(self)


def _fields_of(record: Any) -> dict[str, Any]:
    # One level only: `dataclasses.asdict` deep-copies every nested dict and list, which cost
    # about 0.2 ms per stored request with its decision and factors.
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def transition_request(
    record: RequestRecord, trigger: str, *, now_ms: int, actor: str, key_id: str, message: str, **changes: Any
) -> tuple[RequestRecord, AuditEntry]:
    """Move a request by `trigger`, or raise `Conflict` naming the current state."""
    target = REQUEST_MOVES.get((record.state, trigger))
    if target is None:
        current = record.state.value if record.state else "new"
        raise Conflict(
            f"request {record.id} is {current}; '{trigger}' is not allowed from that state",
            request_id=record.id,
            state=current,
        )
    moved = dataclasses.replace(record, state=target, updated_ms=now_ms, version=record.version + 1, **changes)
    entry = AuditEntry(
        at_ms=now_ms,
        actor=actor,
        key_id=key_id,
        kind="request",
        subject=record.id,
        trigger=trigger,
        from_state=record.state.value if record.state else None,
        to_state=target.value,
        message=message,
        data={"principal": record.principal, "resource": record.resource, "role": record.role, "version": moved.version},
    )
    return moved, entry


def transition_grant(
    record: GrantRecord, trigger: str, *, now_ms: int, actor: str, key_id: str, message: str, **changes: Any
) -> tuple[GrantRecord, AuditEntry]:
    """Move a grant by `trigger`, or raise `Conflict` naming the current state."""
    target = GRANT_MOVES.get((record.state, trigger))
    if target is None:
        current = record.state.value if record.state else "new"
        raise Conflict(
            f"grant {record.id} is {current}; '{trigger}' is not allowed from that state",
            grant_id=record.id,
            state=current,
        )
    if trigger == "removed":
        target = GrantState(record.ending or GrantState.EXPIRED.value)
        changes.setdefault("ended_ms", now_ms)
    elif trigger in ("deadline", "revoke"):
        changes.setdefault("ending", GrantState.EXPIRED.value if trigger == "deadline" else GrantState.REVOKED.value)
    moved = dataclasses.replace(record, state=target, version=record.version + 1, **changes)
    entry = AuditEntry(
        at_ms=now_ms,
        actor=actor,
        key_id=key_id,
        kind="grant",
        subject=record.id,
        trigger=trigger,
        from_state=record.state.value if record.state else None,
        to_state=target.value,
        message=message,
        data={
            "principal": record.principal,
            "resource": record.resource,
            "role": record.role,
            "request_id": record.request_id,
            "expires_ms": moved.expires_ms,
            "version": moved.version,
        },
    )
    return moved, entry
