"""Ledger shards under faults: killed primaries, racing writers, failing provisioners, overlaps."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
import redis

from actors.ledger.plan import shard_key
from actors.provisioners.redis_acl import acl_username
from tests.conftest import wait_for

pytestmark = pytest.mark.fault

RESOURCE = "redis://target/orders"


def submission(principal: str = "alice", *, effect: str = "allow", duration_s: int = 60, key: str | None = None,
               resource: str = RESOURCE) -> dict:
    key = key or uuid.uuid4().hex
    return {
        "request_id": f"req_{uuid.uuid4().hex[:22]}", "submitter": principal, "principal": principal,
        "resource": resource, "role": "read", "duration_s": duration_s, "reason": "fault test", "context": {},
        "provisioner": "redis-acl", "idempotency_key": key, "body_sha256": "sha", "key_id": "key-test",
        "decision": {"effect": effect, "reasons": ["test"], "policy_version": "v1", "required_approvals": 1},
    }


def start_ledger(ray, name: str, redis_server, target_redis, *, role: str = "primary"):
    from actors.ledger.actor import GrantLedger

    config = {"redis_url": redis_server.url, "review_window_s": 3600, "target_redis_url": target_redis.url}
    actor = ray.remote(GrantLedger).options(
        name=name, max_restarts=-1, max_task_retries=-1, num_cpus=0, lifetime=None
    ).remote(0, config, role=role)
    ray.get(actor.ready.remote())
    return actor


def actor_pid(ray, actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def audit_events(redis_url: str) -> list[dict]:
    import json

    client = redis.Redis.from_url(redis_url)
    return [json.loads(fields[b"e"]) for _, fields in client.xrange(shard_key(0, "audit"))]


def acl_user_exists(target_url: str, principal: str, resource: str = RESOURCE) -> bool:
    return redis.Redis.from_url(target_url).execute_command("ACL", "GETUSER", acl_username(principal, resource, "read")) is not None


def test_primary_killed_mid_submit_loses_nothing(ray_runtime, redis_server, target_redis):
    ray = ray_runtime
    ledger = start_ledger(ray, "kill-mid-submit", redis_server, target_redis)
    batches = [[submission(f"user{b}-{i}", key=f"k{b}-{i}") for i in range(20)] for b in range(30)]
    refs = [ledger.submit_many.remote(batch) for batch in batches]
    os.kill(actor_pid(ray, ledger), signal.SIGKILL)

    acknowledged = {}
    for batch, ref in zip(batches, refs):
        try:
            results = ray.get(ref, timeout=60)
        except ray.exceptions.RayActorError:
            continue
        for item, result in zip(batch, results):
            if isinstance(result, dict):
                acknowledged[item["idempotency_key"]] = result["request"]["id"]
    assert acknowledged, "no call survived the restart"

    # Every acknowledged request is in Redis, and resubmitting any key returns the stored request.
    for batch in batches:
        results = ray.get(ledger.submit_many.remote(batch), timeout=60)
        for item, result in zip(batch, results):
            assert isinstance(result, dict), result
            if item["idempotency_key"] in acknowledged:
                assert result["request"]["id"] == acknowledged[item["idempotency_key"]]
                assert result["replayed"]
    events = audit_events(redis_server.url)
    approved = [e for e in events if e["kind"] == "request" and e["to_state"] == "approved"]
    assert len(approved) == len({e["subject"] for e in approved}) == 600


def test_concurrent_approvals_on_two_writers_one_grant(ray_runtime, redis_server, target_redis):
    ray = ray_runtime
    first = start_ledger(ray, "writer-a", redis_server, target_redis)
    request = ray.get(first.submit.remote(submission("bob", effect="review")))["request"]
    # A second primary of the same shard, as after a failover while the old primary still runs.
    second = start_ledger(ray, "writer-b", redis_server, target_redis)
    calls = [
        writer.review.remote(request["id"], reviewer, "approve", "ok", None, "v1", "redis-acl", f"key-{reviewer}")
        for writer, reviewer in ((first, "carol"), (second, "dave"), (first, "erin"), (second, "frank"))
    ]
    outcomes = []
    for call in calls:
        try:
            outcomes.append(ray.get(call))
        except ray.exceptions.RayTaskError as error:
            outcomes.append(error.cause)
    winners = [o for o in outcomes if isinstance(o, dict)]
    assert len(winners) == 1, outcomes
    assert all(type(o).__name__ == "Conflict" for o in outcomes if not isinstance(o, dict))
    events = audit_events(redis_server.url)
    assert len([e for e in events if e["subject"] == request["id"] and e["to_state"] == "approved"]) == 1
    assert len([e for e in events if e["kind"] == "grant" and e["to_state"] == "active"]) == 1


def test_restart_during_grant_expires_on_time(ray_runtime, redis_server, target_redis):
    ray = ray_runtime
    ledger = start_ledger(ray, "restart-during-grant", redis_server, target_redis)
    grant = ray.get(ledger.submit.remote(submission("carol", duration_s=3)))["grant"]
    assert acl_user_exists(target_redis.url, "carol")
    os.kill(actor_pid(ray, ledger), signal.SIGKILL)
    ray.get(ledger.ready.remote(), timeout=30)

    import time

    deadline_s = grant["expires_ms"] / 1000
    wait_for(lambda: not acl_user_exists(target_redis.url, "carol"), timeout_s=max(0.0, deadline_s - time.time()) + 1.0,
             message="ACL user removed within 1 s of the deadline")
    assert time.time() <= deadline_s + 1.0
    wait_for(lambda: any(e["subject"] == grant["id"] and e["to_state"] == "expired" for e in audit_events(redis_server.url)),
             timeout_s=2)


def test_failing_revoke_retried_until_target_returns(ray_runtime, redis_server, target_redis):
    ray = ray_runtime
    ledger = start_ledger(ray, "failing-revoke", redis_server, target_redis)
    grant = ray.get(ledger.submit.remote(submission("dave", duration_s=600)))["grant"]
    target_redis.stop()
    ray.get(ledger.revoke.remote(grant["id"], "admin", "incident over", "key-admin"))

    def retried() -> bool:
        return ray.get(ledger.stats.remote())["revoke_retries_total"] >= 2

    wait_for(retried, timeout_s=10, message="removal retried with backoff")
    stats = ray.get(ledger.stats.remote())
    assert stats["revoking_grants"] == 1
    client = redis.Redis.from_url(redis_server.url)
    import json

    stored = json.loads(client.hget(f"jg:grant:{grant['id']}", "d"))
    assert stored["state"] == "revoking"

    target_redis.restart()
    wait_for(lambda: json.loads(client.hget(f"jg:grant:{grant['id']}", "d"))["state"] == "revoked", timeout_s=15,
             message="revoked after the target returned")
    ends = [e for e in audit_events(redis_server.url) if e["subject"] == grant["id"] and e["to_state"] in ("revoked", "expired")]
    assert len(ends) == 1


def test_overlapping_grants_keep_access_until_last(ray_runtime, redis_server, target_redis):
    ray = ray_runtime
    ledger = start_ledger(ray, "overlap", redis_server, target_redis)
    pending = ray.get(ledger.submit.remote(submission("erin", effect="review")))["request"]
    first = ray.get(ledger.submit.remote(submission("erin", duration_s=600)))["grant"]
    second = ray.get(ledger.review.remote(pending["id"], "frank", "approve", "ok", None, "v1", "redis-acl", "key-frank"))["grant"]
    assert second["id"] != first["id"]

    ray.get(ledger.revoke.remote(first["id"], "admin", "first done", "key-admin"))
    client = redis.Redis.from_url(redis_server.url)
    import json

    wait_for(lambda: json.loads(client.hget(f"jg:grant:{first['id']}", "d"))["state"] == "revoked", timeout_s=5)
    assert acl_user_exists(target_redis.url, "erin")
    assert ray.get(ledger.check.remote("erin", RESOURCE, "read"))["allowed"]

    ray.get(ledger.revoke.remote(second["id"], "admin", "second done", "key-admin"))
    wait_for(lambda: not acl_user_exists(target_redis.url, "erin"), timeout_s=5, message="access removed after the last grant")


def test_idempotency_key_after_failover(ray_runtime, redis_server, target_redis):
    ray = ray_runtime
    ledger = start_ledger(ray, "idem-failover", redis_server, target_redis)
    item = submission("frank", key="same-key")
    first = ray.get(ledger.submit.remote(item))
    os.kill(actor_pid(ray, ledger), signal.SIGKILL)
    again = ray.get(ledger.submit.remote({**item, "request_id": "req_other"}), timeout=30)
    assert again["request"]["id"] == first["request"]["id"]
    assert again["replayed"]


def test_replica_follows_and_takes_over_expiry(ray_runtime, redis_server, target_redis):
    ray = ray_runtime
    primary = start_ledger(ray, "follow-primary", redis_server, target_redis)
    replica = start_ledger(ray, "follow-replica", redis_server, target_redis, role="replica")
    grant = ray.get(primary.submit.remote(submission("gina", duration_s=2)))["grant"]
    wait_for(lambda: ray.get(replica.check.remote("gina", RESOURCE, "read"))["allowed"], timeout_s=2,
             message="replica sees the grant")
    ray.kill(primary, no_restart=True)

    import time

    deadline_s = grant["expires_ms"] / 1000
    wait_for(lambda: not acl_user_exists(target_redis.url, "gina"), timeout_s=max(0.0, deadline_s - time.time()) + 1.0,
             message="replica removed access within 1 s of the deadline")
    assert not ray.get(replica.check.remote("gina", RESOURCE, "read"))["allowed"]
    wait_for(lambda: any(e["subject"] == grant["id"] and e["to_state"] == "expired" for e in audit_events(redis_server.url)),
             timeout_s=3)
