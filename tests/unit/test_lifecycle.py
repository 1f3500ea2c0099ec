import pytest

from actors.domain.lifecycle import GrantRecord, RequestRecord, transition_grant, transition_request
from jitgate.errors import Conflict
from jitgate.models import GrantState, RequestState


def blank_request(**changes) -> RequestRecord:
    values = dict(
        id="req_1", submitter="alice", principal="alice", resource="redis://target/orders", role="read",
        duration_s=600, reason="debug", context={}, decision={"effect": "review"}, created_ms=0, updated_ms=0,
        review_deadline_ms=None, idempotency_key="k", body_sha256="x", key_id="key-alice",
    )
    values.update(changes)
    return RequestRecord(**values)


def blank_grant() -> GrantRecord:
    return GrantRecord(id="grt_1", request_id="req_1", principal="alice", resource="r", role="read",
                       provisioner="record", granted_ms=0, expires_ms=1000)


def move_request(record, trigger):
    return transition_request(record, trigger, now_ms=5, actor="bob", key_id="k", message="m")[0]


def move_grant(record, trigger):
    return transition_grant(record, trigger, now_ms=5, actor="system", key_id="system", message="m")[0]


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [("auto_approve", RequestState.APPROVED), ("policy_deny", RequestState.DENIED), ("route_to_review", RequestState.PENDING)],
)
def test_new_request_moves(trigger, expected):
    assert move_request(blank_request(), trigger).state is expected


@pytest.mark.parametrize("trigger", ["approve", "deny", "cancel", "review_window_passed"])
def test_pending_request_resolves(trigger):
    pending = move_request(blank_request(), "route_to_review")
    resolved = move_request(pending, trigger)
    assert resolved.state in {RequestState.APPROVED, RequestState.DENIED, RequestState.CANCELLED, RequestState.EXPIRED}
    assert resolved.version == pending.version + 1


@pytest.mark.parametrize("trigger", ["approve", "deny", "cancel", "review_window_passed", "add_review"])
def test_resolved_request_rejects_moves(trigger):
    cancelled = move_request(move_request(blank_request(), "route_to_review"), "cancel")
    with pytest.raises(Conflict) as raised:
        move_request(cancelled, trigger)
    assert "cancelled" in str(raised.value)
    assert raised.value.details["request_id"] == "req_1"


def test_transition_audit_entry_names_states():
    pending = move_request(blank_request(), "route_to_review")
    _, entry = transition_request(pending, "approve", now_ms=9, actor="bob", key_id="key-bob", message="ok")
    assert entry.from_state == "pending"
    assert entry.to_state == "approved"
    assert entry.actor == "bob"
    assert entry.key_id == "key-bob"


def test_grant_deadline_ends_expired():
    active = move_grant(blank_grant(), "grant")
    revoking = move_grant(active, "deadline")
    assert revoking.state is GrantState.REVOKING
    assert move_grant(revoking, "removed").state is GrantState.EXPIRED


def test_grant_revoke_ends_revoked():
    revoking = move_grant(move_grant(blank_grant(), "grant"), "revoke")
    ended = move_grant(revoking, "removed")
    assert ended.state is GrantState.REVOKED
    assert ended.ended_ms == 5


@pytest.mark.parametrize("trigger", ["revoke", "deadline", "extend"])
def test_revoking_grant_rejects_second_end(trigger):
    revoking = move_grant(move_grant(blank_grant(), "grant"), "revoke")
    with pytest.raises(Conflict):
        move_grant(revoking, trigger)


def test_terminal_grant_rejects_removed_again():
    ended = move_grant(move_grant(move_grant(blank_grant(), "grant"), "deadline"), "removed")
    with pytest.raises(Conflict):
        move_grant(ended, "removed")


def test_record_round_trip():
    pending = move_request(blank_request(), "route_to_review")
    assert RequestRecord.from_dict(pending.to_dict()) == pending
    grant = move_grant(blank_grant(), "grant")
    assert GrantRecord.from_dict(grant.to_dict()) == grant
