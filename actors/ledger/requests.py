"""Request use cases: submit, review, cancel, and expire after the review window. Pure planning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from actors.domain.lifecycle import GrantRecord, RequestRecord, transition_request
from actors.ledger.grants import SYSTEM, plan_new_grant
from actors.ledger.plan import (
    PENDING_INDEX,
    REQUESTS_INDEX,
    Plan,
    idempotency_key,
    principal_requests_key,
    shard_key,
)
from actors.ledger.state import ShardState
from jitgate.errors import Conflict, Forbidden, InvalidInput
from jitgate.models import Effect, RequestState


@dataclass(frozen=True)
class Submission:
    request_id: str
    submitter: str
    principal: str
    resource: str
    role: str
    duration_s: int
    reason: str
    context: dict[str, Any]
    decision: dict[str, Any]
    provisioner: str
    idempotency_key: str | None
    body_sha256: str
    key_id: str


def plan_submit(
    state: ShardState, submission: Submission, *, shard: int, now_ms: int, review_window_s: int
) -> tuple[Plan, RequestRecord, GrantRecord | None]:
    entitlement = (submission.principal, submission.resource, submission.role)
    effect = Effect(submission.decision["effect"])
    active = state.active_grant(entitlement, now_ms)
    if active is not None and effect is not Effect.DENY:
        raise Conflict(
            f"{submission.principal} already has active grant {active.id} for {submission.role} on "
            f"{submission.resource}; extend that grant instead",
            grant_id=active.id,
        )

    blank = RequestRecord(
        id=submission.request_id, submitter=submission.submitter, principal=submission.principal,
        resource=submission.resource, role=submission.role, duration_s=submission.duration_s,
        reason=submission.reason, context=submission.context, decision=submission.decision,
        created_ms=now_ms, updated_ms=now_ms, review_deadline_ms=None,
        idempotency_key=submission.idempotency_key, body_sha256=submission.body_sha256, key_id=submission.key_id,
    )
    plan = Plan()
    if submission.idempotency_key is not None:
        plan.idempotency = (
            idempotency_key(submission.submitter, submission.idempotency_key),
            f"{submission.request_id} {submission.body_sha256}",
        )
    plan.zadd.append((REQUESTS_INDEX, now_ms, submission.request_id))
    plan.zadd.append((principal_requests_key(submission.principal), now_ms, submission.request_id))

    grant = None
    reasons = "; ".join(submission.decision.get("reasons", ())) or effect.value
    if effect is Effect.ALLOW:
        grant = plan_new_grant(
            plan, shard=shard, request_id=submission.request_id, principal=submission.principal,
            resource=submission.resource, role=submission.role, provisioner=submission.provisioner,
            duration_s=submission.duration_s, now_ms=now_ms, actor=SYSTEM, key_id=submission.key_id,
        )
        request, entry = transition_request(
            blank, "auto_approve", now_ms=now_ms, actor=SYSTEM, key_id=submission.key_id, message=reasons,
            grant_id=grant.id,
        )
    elif effect is Effect.DENY:
        request, entry = transition_request(
            blank, "policy_deny", now_ms=now_ms, actor=SYSTEM, key_id=submission.key_id, message=reasons
        )
    else:
        deadline_ms = now_ms + review_window_s * 1000
        request, entry = transition_request(
            blank, "route_to_review", now_ms=now_ms, actor=SYSTEM, key_id=submission.key_id, message=reasons,
            review_deadline_ms=deadline_ms,
        )
        plan.zadd.append((shard_key(shard, "pending"), deadline_ms, request.id))
        plan.zadd.append((PENDING_INDEX, now_ms, request.id))
    # The request event goes first so the chain reads request -> grant.
    plan.requests.append((None, request))
    plan.audit.insert(0, entry)
    return plan, request, grant


def ensure_reviewable(request: RequestRecord, *, now_ms: int) -> None:
    if request.state is not RequestState.PENDING:
        state = request.state.value if request.state else "new"
        raise Conflict(f"request {request.id} is {state} and takes no more reviews", request_id=request.id, state=state)
    if request.review_deadline_ms is not None and now_ms >= request.review_deadline_ms:
        raise Conflict(
            f"the review window of request {request.id} has ended; the requester must submit a new request",
            request_id=request.id,
        )


def plan_review(
    request: RequestRecord, *, shard: int, reviewer: str, decision: str, reason: str, duration_s: int | None,
    current_policy_version: str, provisioner: str, now_ms: int, key_id: str,
) -> tuple[Plan, RequestRecord, GrantRecord | None]:
    """Record one review; the request resolves when a reviewer denies or the approvals reach the threshold.

    `reviewer` is canonical: the caller mapped aliases and letter case before this guard.
    """
    ensure_reviewable(request, now_ms=now_ms)
    if reviewer in (request.principal, request.submitter):
        role = "principal" if reviewer == request.principal else "submitter"
        raise Forbidden(
            f"{reviewer} is the {role} of request {request.id} and cannot review it", request_id=request.id
        )
    if any(r["reviewer"] == reviewer for r in request.reviews):
        raise Conflict(f"{reviewer} has already reviewed request {request.id}", request_id=request.id)
    if request.decision.get("policy_version") != current_policy_version:
        raise Conflict(
            f"the policy changed since request {request.id} was decided "
            f"({request.decision.get('policy_version')} -> {current_policy_version}); submit a new request",
            request_id=request.id,
        )
    if duration_s is not None and duration_s > request.duration_s:
        raise InvalidInput(
            f"duration_s {duration_s} is longer than the requested {request.duration_s} s; a review can only shorten it",
            field="duration_s",
            value=duration_s,
            limit=request.duration_s,
        )

    review = {"reviewer": reviewer, "decision": decision, "reason": reason, "duration_s": duration_s, "at_ms": now_ms, "key_id": key_id}
    reviews = (*request.reviews, review)
    plan = Plan()
    plan.zrem.append((shard_key(shard, "pending"), request.id))
    plan.zrem.append((PENDING_INDEX, request.id))
    grant = None
    if decision == "deny":
        moved, entry = transition_request(
            request, "deny", now_ms=now_ms, actor=reviewer, key_id=key_id, message=reason, reviews=reviews
        )
        plan.add_request(request, moved, entry)
        return plan, moved, None

    approvals = [r for r in reviews if r["decision"] == "approve"]
    required = max(1, int(request.decision.get("required_approvals") or 1))
    if len(approvals) < required:
        plan = Plan()
        moved, entry = transition_request(
            request, "add_review", now_ms=now_ms, actor=reviewer, key_id=key_id,
            message=f"approval {len(approvals)} of {required}: {reason}", reviews=reviews,
        )
        plan.add_request(request, moved, entry)
        return plan, moved, None

    granted_s = min([request.duration_s, *(r["duration_s"] for r in approvals if r["duration_s"])])
    approved = dataclasses.replace(request, reviews=reviews)
    grant = plan_new_grant(
        plan, shard=shard, request_id=request.id, principal=request.principal, resource=request.resource,
        role=request.role, provisioner=provisioner, duration_s=granted_s, now_ms=now_ms, actor=reviewer, key_id=key_id,
    )
    moved, entry = transition_request(
        approved, "approve", now_ms=now_ms, actor=reviewer, key_id=key_id, message=reason, grant_id=grant.id
    )
    plan.requests.append((request, moved))
    plan.audit.insert(0, entry)
    return plan, moved, grant


def plan_cancel(request: RequestRecord, *, shard: int, actor: str, is_admin: bool, reason: str, now_ms: int, key_id: str) -> tuple[Plan, RequestRecord]:
    if not is_admin and actor not in (request.principal, request.submitter):
        raise Forbidden(f"{actor} may not cancel request {request.id}: only its principal or submitter can", request_id=request.id)
    plan = Plan()
    moved, entry = transition_request(request, "cancel", now_ms=now_ms, actor=actor, key_id=key_id, message=reason)
    plan.add_request(request, moved, entry)
    plan.zrem.append((shard_key(shard, "pending"), request.id))
    plan.zrem.append((PENDING_INDEX, request.id))
    return plan, moved


def plan_expire_request(request: RequestRecord, *, shard: int, now_ms: int) -> tuple[Plan, RequestRecord]:
    plan = Plan()
    moved, entry = transition_request(
        request, "review_window_passed", now_ms=now_ms, actor=SYSTEM, key_id=SYSTEM,
        message="no decision within the review window",
    )
    plan.add_request(request, moved, entry)
    plan.zrem.append((shard_key(shard, "pending"), request.id))
    plan.zrem.append((PENDING_INDEX, request.id))
    return plan, moved
