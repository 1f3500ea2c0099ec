"""Whole-cluster faults: the state Redis down, a Serve ingress replica killed, a Ray node lost.

The first two tests share one cluster started with `cluster.bootstrap.up`; the last one builds
a two-node Ray cluster of its own with `ray.cluster_utils.Cluster`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

from tests.conftest import REPO_ROOT, wait_for
from tests.integration.conftest import running_cluster

pytestmark = pytest.mark.fault

DRIVER_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def jit_cluster():
    with running_cluster(ingress_replicas=2) as running:
        yield running


def run_driver(cluster, script: str, *args: str) -> dict:
    """Run `script` as a Ray driver of the cluster in a child process and return its last output line as JSON.

    A child process, because this pytest process may already have run Ray with other settings,
    and Ray reads its authentication settings once per process.
    """
    from cluster.bootstrap import load_cluster_record, ray_driver_env, _state_paths

    record = load_cluster_record(_state_paths(cluster.settings))
    env = {**os.environ, **ray_driver_env(cluster.settings), "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-c", script, record.ray_address, cluster.settings.namespace, *args],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=DRIVER_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


LIST_REPLICAS = """
import json, os, sys
import ray
ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
def pid_of(actor_self):
    return os.getpid()
replicas = {}
for entry in ray.util.list_named_actors(all_namespaces=True):
    if entry["name"].startswith("SERVE_REPLICA::jitgate#ingress#"):
        handle = ray.get_actor(entry["name"], namespace=entry["namespace"])
        replicas[entry["name"]] = ray.get(handle.__ray_call__.remote(pid_of), timeout=30)
print(json.dumps(replicas))
"""

WAIT_FOR_REPLICAS = """
import json, sys, time
import ray
from ray import serve
ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
killed, expected = sys.argv[3], int(sys.argv[4])
deadline = time.monotonic() + 60
names, running = [], 0
while time.monotonic() < deadline:
    names = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
             if e["name"].startswith("SERVE_REPLICA::jitgate#ingress#")]
    running = serve.status().applications["jitgate"].deployments["ingress"].replica_states.get("RUNNING", 0)
    if killed not in names and len(names) == expected and running == expected:
        break
    time.sleep(0.2)
print(json.dumps({"names": names, "running": running}))
"""


def ledger_submission(principal: str, *, effect: str = "allow", resource: str = "redis://target/orders") -> dict:
    """A decided request as the ingress hands it to `GrantLedger.submit_many`."""
    return {
        "request_id": f"req_{uuid.uuid4().hex[:22]}", "submitter": principal, "principal": principal,
        "resource": resource, "role": "read", "duration_s": 600, "reason": "node fault test", "context": {},
        "provisioner": "redis-acl", "idempotency_key": uuid.uuid4().hex, "body_sha256": "sha", "key_id": "key-test",
        "decision": {"effect": effect, "reasons": ["test"], "policy_version": "v1", "required_approvals": 1},
    }


def access_body(resource: str, *, duration_s: int = 600) -> dict:
    return {"resource": resource, "role": "read", "duration_s": duration_s, "reason": "cluster fault test",
            "context": {"device_posture": "managed"}}


def test_redis_outage_returns_503_then_recovers(jit_cluster):
    from cluster.redis_server import attach_local_redis

    alice = jit_cluster.client("alice")
    before = alice.post("/v1/requests", json=access_body(f"redis://target/b{uuid.uuid4().hex[:8]}"),
                        headers={"Idempotency-Key": f"before-{uuid.uuid4().hex}"})
    assert before.status_code == 201, before.text
    before_request = before.json()["request"]

    server = attach_local_redis(jit_cluster.settings.state_dir, "redis", jit_cluster.settings.redis_fsync)
    assert server is not None
    # With appendfsync everysec, Redis may postpone writing the AOF for up to 2 s while an
    # fsync is slow, and a SIGKILL then loses those writes (the documented everysec window).
    # The record must be in the file before the kill for its survival to be asserted.
    aof = server.paths.data_dir / "appendonly.aof"
    wait_for(lambda: aof.exists() and before_request["id"].encode() in aof.read_bytes(), timeout_s=10,
             message="the acknowledged request in the AOF file")
    body = access_body(f"redis://target/d{uuid.uuid4().hex[:8]}")
    key = f"during-{uuid.uuid4().hex}"
    server.kill()
    try:
        during = [alice.post("/v1/requests", json=body, headers={"Idempotency-Key": key}) for _ in range(3)]
    finally:
        server.restart()

    for response in during:
        assert response.status_code == 503, response.text
        assert response.headers.get("Retry-After"), dict(response.headers)
        assert response.json()["code"] == "unavailable"

    # The cluster reconnects by itself; until then only 503 is acceptable, never 500.
    statuses: list[int] = []

    def submitted():
        response = alice.post("/v1/requests", json=body, headers={"Idempotency-Key": key})
        statuses.append(response.status_code)
        return response if response.status_code < 500 else None

    after = wait_for(submitted, timeout_s=30, interval_s=0.2, message="POST /v1/requests after the Redis restart")
    assert set(statuses) <= {503, 201}, statuses
    # 201, not 200: nothing was stored under this key while Redis was down.
    assert after.status_code == 201, after.text
    assert after.json()["request"]["state"] == "approved"

    stored = alice.get(f"/v1/requests/{before_request['id']}")
    assert stored.status_code == 200, stored.text
    assert stored.json()["state"] == before_request["state"]
    assert stored.json()["grant_id"] == before_request["grant_id"]


def test_ingress_replica_killed_only_in_flight_fail(jit_cluster):
    replicas = run_driver(jit_cluster, LIST_REPLICAS)
    assert len(replicas) == 2, replicas
    killed_name, killed_pid = sorted(replicas.items())[0]

    alice = jit_cluster.client("alice")
    granted = alice.post("/v1/requests", json=access_body(f"redis://target/k{uuid.uuid4().hex[:8]}"),
                         headers={"Idempotency-Key": f"replica-{uuid.uuid4().hex}"})
    assert granted.status_code == 201, granted.text
    check = {"principal": "alice", "resource": granted.json()["request"]["resource"], "role": "read"}

    outcomes: list[tuple[float, float, int | None]] = []
    halt = threading.Event()

    def send_checks() -> None:
        client = jit_cluster.client("alice")
        deadline = time.monotonic() + 120
        while not halt.is_set() and time.monotonic() < deadline:
            sent = time.time()
            try:
                status = client.post("/v1/check", json=check).status_code
            except Exception:  # noqa: BLE001 - a dropped connection is an outcome to count
                status = None
            outcomes.append((sent, time.time(), status))

    senders = [threading.Thread(target=send_checks, daemon=True) for _ in range(4)]
    for sender in senders:
        sender.start()
    wait_for(lambda: len(outcomes) >= 20, timeout_s=30, message="checks answered before the kill")
    killed_at = time.time()
    os.kill(killed_pid, signal.SIGKILL)
    try:
        restored = run_driver(jit_cluster, WAIT_FOR_REPLICAS, killed_name, "2")
        def answered_after_kill() -> bool:
            return sum(1 for sent, _, status in outcomes if sent > killed_at and status == 200) >= 20

        wait_for(answered_after_kill, timeout_s=30, message="checks answered after the kill")
    finally:
        halt.set()
        for sender in senders:
            sender.join(timeout=30)

    assert restored["running"] == 2, restored
    assert killed_name not in restored["names"], restored
    failed = [(sent, received, status) for sent, received, status in outcomes if status is None or status >= 500]
    assert all(sent <= killed_at for sent, _, _ in failed), f"requests sent after the kill failed: {failed}"
    assert len(failed) <= len(senders), failed


def test_node_lost_ledger_keeps_records(redis_server, target_redis):
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from actors.ledger.actor import GrantLedger
    from actors.ledger.plan import grant_key, request_key

    # The GCS marks a node dead after missed health checks, here 3 checks 500 ms apart instead of Ray's slower defaults.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 1024 * 1024, "_system_config": health,
    })
    try:
        worker = cluster.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024, resources={"worker": 1})
        ray.init(address=cluster.address, namespace="jitgate-node-fault", log_to_driver=False)
        cluster.wait_for_nodes()
        wait_for(lambda: ray.cluster_resources().get("worker") == 1, timeout_s=30, message="the worker node's resources")
        config = {"redis_url": redis_server.url, "review_window_s": 3600, "target_redis_url": target_redis.url}

        def node_of(actor) -> str:
            return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()), timeout=60)

        attempts = iter(range(10))

        def ledger_on_worker():
            # Soft affinity, so that Ray can restart the actor on the head. It also lets Ray place
            # the actor on the head while the head's scheduler does not list the worker yet.
            actor = ray.remote(GrantLedger).options(
                name=f"node-fault-ledger-{next(attempts)}", max_restarts=-1, max_task_retries=-1, num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=worker.node_id, soft=True),
            ).remote(0, config)
            ray.get(actor.ready.remote(), timeout=60)
            if node_of(actor) == worker.node_id:
                return actor
            ray.kill(actor, no_restart=True)
            return None

        ledger = wait_for(ledger_on_worker, timeout_s=60, interval_s=0.5, message="a ledger actor on the worker node")
        items = [ledger_submission(f"node{i}", resource=f"redis://target/n{i}") for i in range(10)]
        items += [ledger_submission(f"node-review{i}", effect="review") for i in range(5)]
        acknowledged = ray.get(ledger.submit_many.remote(items), timeout=60)
        assert all(isinstance(result, dict) for result in acknowledged), acknowledged

        cluster.remove_node(worker, allow_graceful=False)
        wait_for(lambda: not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == worker.node_id), timeout_s=30,
                 interval_s=0.2, message="the worker node marked dead")
        ray.get(ledger.ready.remote(), timeout=60)
        assert node_of(ledger) == cluster.head_node.node_id

        store = redis.Redis.from_url(redis_server.url)
        for item, result in zip(items, acknowledged):
            request = result["request"]
            stored = json.loads(store.hget(request_key(request["id"]), "d"))
            assert stored["state"] == request["state"], stored
            replayed = ray.get(ledger.submit.remote({**item, "request_id": "req_unused"}), timeout=60)
            assert replayed["replayed"] and replayed["request"]["id"] == request["id"]
            if result["grant"] is None:
                continue
            grant = json.loads(store.hget(grant_key(result["grant"]["id"]), "d"))
            assert grant["state"] == "active", grant
            found = ray.get(ledger.check.remote(item["principal"], item["resource"], "read"), timeout=60)
            assert found["allowed"] and found["grant_id"] == result["grant"]["id"], found
        assert ray.get(ledger.stats.remote(), timeout=60)["active_grants"] == 10
    finally:
        ray.shutdown()
        cluster.shutdown()
