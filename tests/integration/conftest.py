"""A local jitgate cluster (Ray head, two embedded Redis servers, Serve app) for the whole session."""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import wait_for


def new_resource() -> str:
    return f"redis://target/t{uuid.uuid4().hex[:10]}"


def submit(client, resource: str, role: str = "read", duration_s: int = 600, key: str | None = None, **extra):
    body = {"resource": resource, "role": role, "duration_s": duration_s, "reason": "integration test",
            "context": {"device_posture": "managed"}, **extra}
    return client.post("/v1/requests", json=body, headers={"Idempotency-Key": key or uuid.uuid4().hex})


def answers_by_replica(send: Callable[[], httpx.Response], allowed: Callable[[httpx.Response], bool],
                       calls: int = 40) -> dict[str, set[bool]]:
    """Send `calls` requests and return the `allowed` values seen, by the ingress replica that sent each response."""
    seen: dict[str, set[bool]] = {}
    for _ in range(calls):
        response = send()
        seen.setdefault(response.headers["x-jitgate-replica"], set()).add(allowed(response))
    return seen


def revoke_and_wait_for_denials(admin: httpx.Client, grant_id: str, send: Callable[[], httpx.Response],
                                allowed: Callable[[httpx.Response], bool], *, timeout_s: float, message: str) -> None:
    """Check that both ingress replicas allow, revoke the grant, then wait until both deny."""
    before = answers_by_replica(send, allowed)
    assert len(before) == 2, before
    assert all(values == {True} for values in before.values()), before

    revoked = admin.post(f"/v1/grants/{grant_id}/revoke", json={"reason": "incident over"})
    assert revoked.status_code == 200, revoked.text

    def all_replicas_deny() -> bool:
        seen = answers_by_replica(send, allowed)
        return len(seen) == 2 and all(values == {False} for values in seen.values())

    wait_for(all_replicas_deny, timeout_s=timeout_s, message=message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    settings: object
    api_url: str
    keys: dict[str, str]
    target_redis_url: str
    redis_url: str

    def client(self, profile: str) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {self.keys[profile]}"}, timeout=30)


def cluster_settings(state_dir: Path, **overrides):
    from cluster.settings import Settings

    values = dict(
        state_dir=state_dir, dashboard=False, http_port=free_port(), review_window_s=5, check_cache_ttl_ms=30_000,
        ingress_replicas=2, ledger_shards=2, policy_shards=2, num_cpus=2,
    )
    values.update(overrides)
    return Settings(**values)


def open_cluster(settings) -> LocalCluster:
    from cluster.bootstrap import load_cluster_record, _state_paths

    credentials = yaml.safe_load((settings.state_dir / "credentials.yaml").read_text())
    record = load_cluster_record(_state_paths(settings))
    return LocalCluster(
        settings=settings, api_url=record.api_url, keys={name: p["key"] for name, p in credentials["profiles"].items()},
        target_redis_url=record.target_redis_url, redis_url=record.redis_url,
    )


@contextmanager
def running_cluster(**overrides):
    """Start a cluster with `cluster_settings` under a new /tmp state dir, and stop and remove it afterwards."""
    from cluster.bootstrap import down, up

    state_dir = Path(tempfile.mkdtemp(prefix="jg", dir="/tmp"))
    settings = cluster_settings(state_dir, **overrides)
    try:
        up(settings, out=lambda line: None)
        yield open_cluster(settings)
    finally:
        down(settings, out=lambda line: None)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster():
    with running_cluster() as running:
        yield running
