"""`check_columns` of the ingress deployment, called through a Serve `DeploymentHandle` with packed columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import new_resource, revoke_and_wait_for_denials, submit

pytestmark = pytest.mark.integration

DRIVER_TIMEOUT_S = 90

# A child process, because Ray reads its authentication settings once per process and this
# pytest process may have run Ray with other settings.
CHECK_THROUGH_HANDLE = """
import json, sys
import ray
from ray import serve
from actors.domain.columns import pack_column
ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
columns = json.loads(sys.argv[3])
handle = serve.get_app_handle("jitgate")
result = handle.check_columns.remote(*(pack_column(columns[name]) for name in ("principals", "resources", "roles"))).result()
print(json.dumps({
    "allowed": result["allowed"].tolist(), "allowed_dtype": str(result["allowed"].dtype),
    "expires_at_ms": result["expires_at_ms"].tolist(), "expires_dtype": str(result["expires_at_ms"].dtype),
}))
"""


def check_through_handle(cluster, columns: dict[str, list[str]]) -> dict:
    from cluster.bootstrap import _state_paths, load_cluster_record, ray_driver_env

    record = load_cluster_record(_state_paths(cluster.settings))
    env = {**os.environ, **ray_driver_env(cluster.settings), "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-c", CHECK_THROUGH_HANDLE, record.ray_address, cluster.settings.namespace, json.dumps(columns)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=DRIVER_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_handle_checks_packed_columns(cluster):
    alice = cluster.client("alice")
    resource = new_resource()
    created = submit(alice, resource)
    assert created.status_code == 201, created.text
    grant = created.json()["grant"]
    assert grant is not None, created.text

    columns = {
        "principals": ["alice", "bob", "ALICE", "alice"],
        "resources": [resource, resource, resource, resource],
        "roles": ["read", "read", "read", "write"],
    }
    result = check_through_handle(cluster, columns)
    assert result["allowed"] == [True, False, True, False]
    assert result["allowed_dtype"] == "bool"
    assert result["expires_dtype"] == "int64"
    assert result["expires_at_ms"][1] == 0
    assert result["expires_at_ms"][3] == 0
    assert result["expires_at_ms"][0] == result["expires_at_ms"][2]
    assert result["expires_at_ms"][0] > 0

    over_http = alice.post("/v1/check:batch", json=columns)
    assert over_http.status_code == 200, over_http.text
    assert over_http.json() == {"allowed": result["allowed"], "expires_at_ms": result["expires_at_ms"]}


def test_http_batch_rejects_bad_columns(cluster):
    alice = cluster.client("alice")
    uneven = alice.post("/v1/check:batch", json={"principals": ["alice"], "resources": [], "roles": ["read"]})
    assert uneven.status_code == 400, uneven.text
    problem = uneven.json()
    assert problem["field"] == "resources"
    assert problem["value"] == 0
    assert problem["limit"] == 1

    separator = alice.post("/v1/check:batch", json={"principals": ["alice\x1fbob"], "resources": ["db"], "roles": ["read"]})
    assert 400 <= separator.status_code < 500, separator.text
    assert separator.json()["field"] == "principals.0"


def test_revoke_reaches_cached_batches(cluster):
    alice, admin = cluster.client("alice"), cluster.client("admin")
    resource = new_resource()
    created = submit(alice, resource)
    assert created.status_code == 201, created.text
    grant = created.json()["grant"]
    body = {"principals": ["alice"], "resources": [resource], "roles": ["read"]}

    def send():
        return admin.post("/v1/check:batch", json=body)

    def allowed(response):
        return response.json()["allowed"][0]

    # The cache TTL is 30 s in this cluster, so only the invalidation can make this pass in time.
    revoke_and_wait_for_denials(
        admin, grant["id"], send, allowed,
        timeout_s=5.0, message="every replica's batch check returns false after the revoke",
    )
