"""A whole-cluster restart across a grant's deadline: the grant ends at start-up and nothing is lost."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_for
from tests.integration.conftest import cluster_settings, open_cluster

pytestmark = pytest.mark.integration

TTL_S = 12


def test_restart_expires_overdue_grant_and_keeps_records():
    from cluster.bootstrap import down, up

    state_dir = Path(tempfile.mkdtemp(prefix="jg", dir="/tmp"))
    settings = cluster_settings(state_dir, review_window_s=3600)
    try:
        up(settings, out=lambda line: None)
        cluster = open_cluster(settings)
        alice, admin = cluster.client("alice"), cluster.client("admin")
        resource = f"redis://target/r{uuid.uuid4().hex[:8]}"
        body = {"resource": resource, "role": "read", "duration_s": TTL_S, "reason": "restart test",
                "context": {"device_posture": "managed"}}
        short = alice.post("/v1/requests", json=body, headers={"Idempotency-Key": "restart-short"}).json()
        grant = short["grant"]
        assert grant["state"] == "active"
        credentials = alice.get(f"/v1/grants/{grant['id']}/credentials").json()

        acknowledged = {short["request"]["id"]: "approved"}
        for index in range(20):
            pending = alice.post("/v1/requests", json={**body, "resource": f"{resource}-{index}", "role": "write", "duration_s": 600},
                                 headers={"Idempotency-Key": f"restart-{index}"})
            assert pending.status_code == 201, pending.text
            acknowledged[pending.json()["request"]["id"]] = pending.json()["request"]["state"]

        down(settings, out=lambda line: None)
        expires_at = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00")).timestamp()
        wait_for(lambda: time.time() > expires_at + 0.5, timeout_s=TTL_S + 5, message="deadline passed while down")

        up_started_at = time.time()
        up(settings, out=lambda line: None)
        ready_at = time.time()
        cluster = open_cluster(settings)
        admin = cluster.client("admin")

        wait_for(lambda: admin.get(f"/v1/grants/{grant['id']}").json()["state"] == "expired", timeout_s=2.0,
                 message="overdue grant expired within 2 s of ready")
        assert time.time() - ready_at <= 2.5

        target = redis.Redis.from_url(cluster.target_redis_url)
        assert target.execute_command("ACL", "GETUSER", credentials["username"]) is None
        events = admin.get("/v1/audit", params={"limit": 10_000}).json()["items"]
        expired = [e for e in events if e["subject"] == grant["id"] and e["to_state"] == "expired"]
        assert len(expired) == 1
        revoking = [e for e in events if e["subject"] == grant["id"] and e["to_state"] == "revoking"]
        # The deadline was reached while the cluster was down, so the shard ended it at start-up.
        assert datetime.fromisoformat(revoking[0]["at"].replace("Z", "+00:00")).timestamp() >= up_started_at

        for request_id, state in acknowledged.items():
            response = admin.get(f"/v1/requests/{request_id}")
            assert response.status_code == 200, request_id
            assert response.json()["state"] == state
        again = alice.post("/v1/requests", json=body, headers={"Idempotency-Key": "restart-short"})
        assert again.status_code == 200
        assert again.json()["request"]["id"] == short["request"]["id"]
    finally:
        down(settings, out=lambda line: None)
        shutil.rmtree(state_dir, ignore_errors=True)
