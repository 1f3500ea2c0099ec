import pytest

from actors.domain.clock import FakeClock
from actors.ledger.grants import plan_end, plan_extend, plan_removed
from actors.ledger.requests import Submission, plan_cancel, plan_review, plan_submit
from actors.ledger.state import ShardState
from jitgate.errors import Conflict, Forbidden, InvalidInput
from jitgate.models import GrantState, RequestState

WINDOW_S = 3600


def submission(effect: str, *, request_id: str = "req_1", approvals: int = 1, principal: str = "alice",
               submitter: str = "alice") -> Submission:
    return Submission(
        request_id=request_id, submitter=submitter, principal=principal, resource="redis://target/orders", role="read",
        duration_s=600, reason="incident 42", context={}, provisioner="record", idempotency_key=request_id,
        body_sha256="sha", key_id="key-alice",
        decision={"effect": effect, "reasons": ["policy x"], "policy_version": "v1", "required_approvals": approvals},
    )


def submit(state: ShardState, clock: FakeClock, effect: str, **kwargs):
    plan, request, grant = plan_submit(state, submission(effect, **kwargs), shard=0, now_ms=clock.now_ms(), review_window_s=WINDOW_S)
    state.apply(plan)
    return plan, request, grant


def review(request, clock, reviewer="bob", decision="approve", duration_s=None, version="v1"):
    return plan_review(
        request, shard=0, reviewer=reviewer, decision=decision, reason="ok", duration_s=duration_s,
        current_policy_version=version, provisioner="record", now_ms=clock.now_ms(), key_id=f"key-{reviewer}",
    )


def test_allow_creates_active_grant():
    state, clock = ShardState(), FakeClock()
    plan, request, grant = submit(state, clock, "allow")
    assert request.state is RequestState.APPROVED
    assert grant.state is GrantState.ACTIVE
    assert grant.expires_ms == clock.now_ms() + 600_000
    assert [entry.to_state for entry in plan.audit] == ["approved", "active"]
    assert state.active_grant(grant.entitlement, clock.now_ms()) == grant


def test_second_request_on_active_entitlement_conflicts():
    state, clock = ShardState(), FakeClock()
    _, _, grant = submit(state, clock, "allow")
    with pytest.raises(Conflict) as raised:
        submit(state, clock, "allow", request_id="req_2")
    assert raised.value.details["grant_id"] == grant.id


def test_deny_creates_no_grant():
    state, clock = ShardState(), FakeClock()
    _, request, grant = submit(state, clock, "deny")
    assert request.state is RequestState.DENIED
    assert grant is None


def test_review_by_principal_forbidden():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    with pytest.raises(Forbidden):
        review(request, clock, reviewer="alice")


def test_review_by_submitter_forbidden():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review", principal="alice", submitter="ci-bot")
    with pytest.raises(Forbidden):
        review(request, clock, reviewer="ci-bot")


def test_two_approvals_required():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review", approvals=2)
    plan, once, grant = review(request, clock, reviewer="bob")
    assert once.state is RequestState.PENDING
    assert grant is None
    with pytest.raises(Conflict):
        review(once, clock, reviewer="bob")
    _, twice, grant = review(once, clock, reviewer="carol")
    assert twice.state is RequestState.APPROVED
    assert grant.state is GrantState.ACTIVE


def test_narrowed_approval_shortens_grant():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    _, _, grant = review(request, clock, duration_s=60)
    assert grant.expires_ms - grant.granted_ms == 60_000


def test_review_cannot_widen_duration():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    with pytest.raises(InvalidInput) as raised:
        review(request, clock, duration_s=601)
    assert raised.value.details["limit"] == 600


def test_review_after_window_conflicts():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    clock.advance(WINDOW_S)
    with pytest.raises(Conflict) as raised:
        review(request, clock)
    assert "review window" in str(raised.value)


def test_review_after_policy_change_conflicts():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    with pytest.raises(Conflict) as raised:
        review(request, clock, version="v2")
    assert "policy changed" in str(raised.value)


def test_review_after_cancel_conflicts():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    _, cancelled = plan_cancel(request, shard=0, actor="alice", is_admin=False, reason="done", now_ms=clock.now_ms(), key_id="k")
    with pytest.raises(Conflict):
        review(cancelled, clock)


def test_cancel_by_stranger_forbidden():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    with pytest.raises(Forbidden):
        plan_cancel(request, shard=0, actor="mallory", is_admin=False, reason="x", now_ms=clock.now_ms(), key_id="k")


def test_due_grants_follow_fake_clock():
    state, clock = ShardState(), FakeClock()
    _, _, grant = submit(state, clock, "allow")
    clock.advance(599)
    assert state.due_grants(clock.now_ms()) == []
    clock.advance(1)
    assert state.due_grants(clock.now_ms()) == [grant]
    assert state.active_grant(grant.entitlement, clock.now_ms()) is None


def test_due_requests_after_review_window():
    state, clock = ShardState(), FakeClock()
    _, request, _ = submit(state, clock, "review")
    clock.advance(WINDOW_S)
    assert state.due_requests(clock.now_ms()) == [request]


def test_extended_grant_not_due_at_old_deadline():
    state, clock = ShardState(), FakeClock()
    _, _, grant = submit(state, clock, "allow")
    plan, extended = plan_extend(grant, shard=0, duration_s=1200, now_ms=clock.now_ms(), actor="alice", key_id="k", reason="more")
    state.apply(plan)
    clock.advance(600)
    assert state.due_grants(clock.now_ms()) == []
    assert state.active_grant(grant.entitlement, clock.now_ms()).expires_ms == extended.expires_ms


def test_overlapping_grants_keep_entitlement():
    state, clock = ShardState(), FakeClock()
    _, _, first = submit(state, clock, "allow")
    # A second grant on the same entitlement, as after an approval racing an auto-approval.
    from actors.ledger.grants import plan_new_grant
    from actors.ledger.plan import Plan

    plan = Plan()
    second = plan_new_grant(plan, shard=0, request_id="req_9", principal="alice", resource=first.resource, role="read",
                            provisioner="record", duration_s=1200, now_ms=clock.now_ms(), actor="system", key_id="k")
    state.apply(plan)
    end_plan, revoking = plan_end(first, "revoke", shard=0, now_ms=clock.now_ms(), actor="alice", key_id="k", reason="done")
    state.apply(end_plan)
    assert state.has_other_active(first.entitlement, first.id)
    assert state.active_grant(first.entitlement, clock.now_ms()) == second
    removed_plan, ended = plan_removed(revoking, shard=0, now_ms=clock.now_ms(), message="removed")
    state.apply(removed_plan)
    assert ended.state is GrantState.REVOKED
    assert first.id not in state.grants
