"""The v1 API end to end on a local cluster: real Ray Serve, real Redis, real ACL users."""

from __future__ import annotations

import uuid

import pytest
import redis

from tests.conftest import wait_for
from tests.integration.conftest import new_resource, revoke_and_wait_for_denials, submit

pytestmark = pytest.mark.integration

ACL_RESOURCE = "redis://target/orders"


def can_login(url: str, username: str, password: str) -> bool:
    client = redis.Redis.from_url(url, username=username, password=password, socket_timeout=2)
    try:
        return client.ping()
    except redis.exceptions.AuthenticationError:
        return False
    finally:
        client.close()


def check(client, principal: str, resource: str, role: str = "read") -> bool:
    response = client.post("/v1/check", json={"principal": principal, "resource": resource, "role": role})
    assert response.status_code == 200, response.text
    return response.json()["allowed"]


def test_auto_allow_then_expiry(cluster):
    alice, admin = cluster.client("alice"), cluster.client("admin")
    resource = new_resource()
    response = submit(alice, resource, duration_s=3)
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["request"]["decision"]["effect"] == "allow", result["request"]["decision"]
    grant = result["grant"]
    assert grant["state"] == "active"

    credentials = alice.get(f"/v1/grants/{grant['id']}/credentials").json()
    assert can_login(cluster.target_redis_url, credentials["username"], credentials["password"])
    assert check(alice, "alice", resource)

    wait_for(lambda: admin.get(f"/v1/grants/{grant['id']}").json()["state"] == "expired", timeout_s=3 + 2,
             message="grant expired")
    assert not can_login(cluster.target_redis_url, credentials["username"], credentials["password"])
    assert not check(alice, "alice", resource)
    events = admin.get("/v1/audit", params={"limit": 10_000}).json()["items"]
    expired = [e for e in events if e["subject"] == grant["id"] and e["to_state"] == "expired"]
    assert len(expired) == 1


def test_review_then_approval_by_other_reviewer(cluster):
    alice, bob = cluster.client("alice"), cluster.client("bob")
    resource = new_resource()
    response = submit(alice, resource, role="write", duration_s=600)
    assert response.status_code == 201, response.text
    request = response.json()["request"]
    assert request["state"] == "pending"
    assert response.json()["grant"] is None

    approved = bob.post(f"/v1/requests/{request['id']}/reviews", json={"decision": "approve", "reason": "looks right"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["request"]["state"] == "approved"
    assert approved.json()["grant"]["state"] == "active"
    assert check(bob, "alice", resource, "write")


@pytest.mark.parametrize("principal_as", ["alice", "ALICE", "Alice@Example.com", "alice.smith"])
def test_self_review_forbidden_under_alias(cluster, principal_as):
    admin, alice = cluster.client("admin"), cluster.client("alice")
    # The admin key files for alice under one of her aliases; alice then tries to review it.
    response = submit(admin, new_resource(), role="write", principal=principal_as)
    assert response.status_code == 201, response.text
    request = response.json()["request"]
    assert request["principal"] == "alice"
    reviewed = alice.post(f"/v1/requests/{request['id']}/reviews", json={"decision": "approve", "reason": "mine"})
    assert reviewed.status_code == 403, reviewed.text


def test_submitter_cannot_review(cluster):
    bob = cluster.client("bob")
    admin = cluster.client("admin")
    response = submit(admin, new_resource(), role="write", principal="bob@example.com")
    request = response.json()["request"]
    # admin submitted it: admin may not approve it either.
    reviewed = admin.post(f"/v1/requests/{request['id']}/reviews", json={"decision": "approve", "reason": "mine"})
    assert reviewed.status_code == 403, reviewed.text
    assert bob.post(f"/v1/requests/{request['id']}/reviews", json={"decision": "approve", "reason": "x"}).status_code == 403


def test_idempotency_key_same_and_different_body(cluster):
    alice = cluster.client("alice")
    resource = new_resource()
    key = uuid.uuid4().hex
    first = submit(alice, resource, role="write", key=key)
    second = submit(alice, resource, role="write", key=key)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["request"]["id"] == first.json()["request"]["id"]
    different = submit(alice, resource, role="write", duration_s=601, key=key)
    assert different.status_code == 422, different.text
    assert different.json()["code"] == "idempotency_mismatch"


@pytest.mark.parametrize("duration", [0, -5, 43_201, "abc", 1.5, None])
def test_bad_duration_is_400_naming_field(cluster, duration):
    alice = cluster.client("alice")
    response = submit(alice, new_resource(), duration_s=duration)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["field"] == "duration_s"
    assert "duration_s" in problem["detail"]


def test_over_global_maximum_names_limit(cluster):
    response = submit(cluster.client("alice"), new_resource(), duration_s=43_201)
    assert response.json()["limit"] == 43_200


def test_over_policy_maximum_denied_naming_maximum(cluster):
    response = submit(cluster.client("alice"), new_resource(), role="write", duration_s=5 * 3600)
    assert response.status_code == 201, response.text
    decision = response.json()["request"]["decision"]
    assert decision["effect"] == "deny"
    assert any("14400" in reason for reason in decision["reasons"]), decision["reasons"]
    assert response.json()["grant"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"resource": "redis://target/x", "role": "read", "duration_s": 60, "reason": "r", "sudo": True},
        {"resource": "redis://target/x", "role": "read", "duration_s": 60, "reason": "r", "context": {"admin": 1}},
        {"resource": "redis://target/x", "role": "READ!", "duration_s": 60, "reason": "r"},
        {"resource": "x" * 600, "role": "read", "duration_s": 60, "reason": "r"},
        {"resource": "redis://target/x", "role": "read", "duration_s": 60, "reason": ""},
        {"role": "read", "duration_s": 60, "reason": "r"},
    ],
)
def test_malformed_body_is_4xx(cluster, body):
    response = cluster.client("alice").post("/v1/requests", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["field"]


def test_invalid_json_and_huge_body(cluster):
    alice = cluster.client("alice")
    response = alice.post("/v1/requests", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["field"] == "body"
    assert "not valid JSON" in response.json()["detail"]
    assert "at character 1" in response.json()["detail"]
    huge = alice.post("/v1/requests", content=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    assert huge.json()["code"] == "payload_too_large"


def test_missing_or_unknown_key_is_401(cluster):
    import httpx

    anonymous = httpx.Client(base_url=cluster.api_url)
    assert anonymous.post("/v1/check", json={"principal": "a", "resource": "b", "role": "read"}).status_code == 401
    wrong = httpx.Client(base_url=cluster.api_url, headers={"Authorization": "Bearer nope"})
    assert wrong.get("/v1/grants").status_code == 401


def test_review_after_cancel_conflicts(cluster):
    alice, bob = cluster.client("alice"), cluster.client("bob")
    request = submit(alice, new_resource(), role="write").json()["request"]
    cancelled = alice.post(f"/v1/requests/{request['id']}/cancel", json={"reason": "not needed"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    late = bob.post(f"/v1/requests/{request['id']}/reviews", json={"decision": "approve", "reason": "x"})
    assert late.status_code == 409, late.text


def test_review_after_window_conflicts(cluster):
    alice, bob = cluster.client("alice"), cluster.client("bob")
    request = submit(alice, new_resource(), role="write").json()["request"]
    wait_for(lambda: alice.get(f"/v1/requests/{request['id']}").json()["state"] == "expired",
             timeout_s=cluster.settings.review_window_s + 3, message="pending request expired")
    late = bob.post(f"/v1/requests/{request['id']}/reviews", json={"decision": "approve", "reason": "x"})
    assert late.status_code == 409, late.text


def test_active_grant_conflict_names_grant(cluster):
    alice = cluster.client("alice")
    resource = new_resource()
    grant = submit(alice, resource).json()["grant"]
    again = submit(alice, resource)
    assert again.status_code == 409, again.text
    assert again.json()["grant_id"] == grant["id"]


def test_revoke_seen_by_check_on_every_replica(cluster):
    alice, admin = cluster.client("alice"), cluster.client("admin")
    resource = new_resource()
    grant = submit(alice, resource).json()["grant"]
    body = {"principal": "alice", "resource": resource, "role": "read"}

    def send():
        return admin.post("/v1/check", json=body)

    def allowed(response):
        return response.json()["allowed"]

    # The cache TTL is 30 s in this cluster, so only the invalidation can make this pass in time.
    revoke_and_wait_for_denials(
        admin, grant["id"], send, allowed, timeout_s=1.0, message="every replica returns false after the revoke",
    )
    wait_for(lambda: admin.get(f"/v1/grants/{grant['id']}").json()["state"] == "revoked", timeout_s=2)


def test_revoke_of_ended_grant_conflicts(cluster):
    alice, admin = cluster.client("alice"), cluster.client("admin")
    grant = submit(alice, new_resource()).json()["grant"]
    assert admin.post(f"/v1/grants/{grant['id']}/revoke", json={"reason": "x"}).status_code == 200
    again = admin.post(f"/v1/grants/{grant['id']}/revoke", json={"reason": "x"})
    assert again.status_code == 409, again.text


def test_unknown_ids_are_404(cluster):
    admin = cluster.client("admin")
    assert admin.get("/v1/requests/req_nope").status_code == 404
    assert admin.get("/v1/grants/grt_nope").status_code == 404
    assert admin.post("/v1/grants/grt_nope/revoke", json={"reason": "x"}).status_code == 404


def test_check_batch_columnar(cluster):
    alice = cluster.client("alice")
    resource = new_resource()
    submit(alice, resource)
    response = alice.post("/v1/check:batch", json={"principals": ["alice", "bob"], "resources": [resource, resource], "roles": ["read", "read"]})
    assert response.status_code == 200, response.text
    assert response.json()["allowed"] == [True, False]
    mismatched = alice.post("/v1/check:batch", json={"principals": ["alice"], "resources": [], "roles": []})
    assert mismatched.status_code == 400


def test_decisions_batch_stores_nothing(cluster):
    admin = cluster.client("admin")
    before = admin.get("/v1/requests", params={"limit": 1}).json()["items"]
    response = admin.post("/v1/decisions:batch", json={"requests": [
        {"principal": "alice", "resource": "amazon:1", "role": "read", "duration_s": 600, "context": {"device_posture": "managed"}},
        {"principal": "alice", "resource": "amazon:2", "role": "write", "duration_s": 600},
    ]})
    assert response.status_code == 200, response.text
    effects = [d["effect"] for d in response.json()["decisions"]]
    assert effects[1] == "deny"
    after = admin.get("/v1/requests", params={"limit": 1}).json()["items"]
    assert before == after


def test_openapi_page(cluster):
    import httpx

    spec = httpx.get(f"{cluster.api_url}/openapi.json").json()
    assert "/v1/requests" in spec["paths"]
    assert httpx.get(f"{cluster.api_url}/docs").status_code == 200


def test_signed_event_creates_request(cluster):
    import json
    import time

    import httpx
    import yaml

    from cluster.events import sign

    secret = yaml.safe_load((cluster.settings.event_secrets_file).read_text())["ci"].encode()
    body = json.dumps({
        "pipeline": {"service_account": "deploy-bot"}, "deployment": {"target": new_resource()},
        "job": {"timeout_s": 900, "url": "https://ci.example.com/jobs/7"}, "change": {"id": "CHG-7"},
        "delivery": {"id": uuid.uuid4().hex},
    }).encode()
    timestamp = str(int(time.time()))
    headers = {"X-Jitgate-Timestamp": timestamp, "X-Jitgate-Signature": sign(secret, timestamp, body),
               "Content-Type": "application/json"}
    created = httpx.post(f"{cluster.api_url}/v1/events/ci", content=body, headers=headers)
    assert created.status_code == 201, created.text
    request = created.json()["request"]
    assert request["principal"] == "deploy-bot"
    assert request["submitter"] == "source:ci"
    assert request["context"]["ticket"] == "CHG-7"
    again = httpx.post(f"{cluster.api_url}/v1/events/ci", content=body, headers=headers)
    assert again.status_code == 200
    assert again.json()["request"]["id"] == request["id"]

    forged = httpx.post(f"{cluster.api_url}/v1/events/ci", content=body.replace(b"deploy-bot", b"mallory"), headers=headers)
    assert forged.status_code == 401, forged.text
    unknown = httpx.post(f"{cluster.api_url}/v1/events/nope", content=body, headers=headers)
    assert unknown.status_code == 404


@pytest.mark.parametrize("resource", ["redis://target/*", "redis://target/", "redis://target/p*", "redis://target/[p]ay"])
def test_glob_key_prefix_is_400(cluster, resource):
    response = submit(cluster.client("alice"), resource)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "resource"


@pytest.mark.parametrize("raw", [b'{"resource": "redis://target/x", "role": "read", "duration_s": NaN, "reason": "r"}',
                                 b'{"resource": "redis://target/x", "role": "read", "duration_s": Infinity, "reason": "r"}',
                                 b'{"resource": "redis://target/x", "role": "read", "duration_s": 1e400, "reason": "r"}'])
def test_non_finite_numbers_are_400(cluster, raw):
    response = cluster.client("alice").post("/v1/requests", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(("path", "after"), [("/v1/requests", "\u00b2"), ("/v1/grants", "\u00b2"), ("/v1/audit", "\u00b2:1"),
                                             ("/v1/audit", "0:1-2-3"), ("/v1/audit", "0:-1"), ("/v1/audit", "1:99999999999999999999999-0")])
def test_bad_cursor_is_400(cluster, path, after):
    response = cluster.client("admin").get(path, params={"after": after})
    assert response.status_code == 400, response.text


def test_control_characters_in_reason_are_400(cluster):
    response = submit(cluster.client("alice"), new_resource(), reason="a\x1b[31mred")
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "reason"


def test_chunked_huge_body_is_413(cluster):
    def chunks():
        for _ in range(40):
            yield b"x" * 65_536

    response = cluster.client("alice").post("/v1/requests", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["field"] == "body"
    assert response.json()["limit"] == 1_048_576


def test_metrics_count_actor_calls_by_transport(cluster):
    alice = cluster.client("alice")

    def channel_calls_reported() -> str | None:
        assert submit(alice, new_resource(), duration_s=60).status_code == 201
        text = alice.get("/metrics").text
        expected_lines = [f'jitgate_actor_calls_total{{actor="{actor}",transport="channel"}}'
                  for actor in ("GrantLedger", "PolicyActor", "RiskScorer")]
        return text if all(line in text for line in expected_lines) else None

    text = wait_for(channel_calls_reported, timeout_s=30, interval_s=0.1, message="channel calls in /metrics")
    assert "# TYPE jitgate_actor_calls_total counter" in text
    assert 'transport="ray"' in text
