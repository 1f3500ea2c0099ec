"""The bulk decisions path without Ray: risk columns and the body parsing of `POST /v1/decisions:batch`."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from actors.domain.directory import ApiKey, ResourceEntry
from actors.policy.actor import PolicyActor
from actors.risk.actor import RiskScorer
from cluster.app import create_app
from cluster.backends import policy_shard_of
from cluster.decisions import DecisionItem, decide_batch, risk_columns
from jitgate.models import DecisionBatchBody

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "configs" / "risk" / "model.npz"
POLICIES = REPO / "configs" / "policies"
NOW_MS = 1_780_000_000_000


def make_item(principal: str, attributes: dict, resource: str = "amazon:17183", **changes) -> DecisionItem:
    values = dict(
        principal=principal, principal_attributes=attributes, resource=resource,
        resource_entry=ResourceEntry(pattern="*", usual_duration_s=1800), role="read", duration_s=3600,
        device_posture="managed", hour_utc=10, source="api", now_ms=NOW_MS,
    )
    values.update(changes)
    return DecisionItem(**values)


def test_risk_columns_score_as_risk_input():
    items = [
        make_item("alice", {"mgr_id": "1540", "role_rollup_1": "117961", "department": "payments"}),
        make_item("bob", {"mgr_id": 1540, "groups": ["sre"], "on_call": True}, device_posture="unknown"),
        make_item("carol", {}, resource="postgres://prod/orders", hour_utc=23, duration_s=14400),
        make_item("alice", {"role_code": "117880"}, now_ms=NOW_MS + 1000),
    ]
    expected = asyncio.run(RiskScorer(str(MODEL)).score([item.risk_input() for item in items]))
    result = asyncio.run(RiskScorer(str(MODEL)).score_requests(risk_columns(items)))
    assert result["risk_score"] == [row["risk_score"] for row in expected]
    assert result["factors"] == [row["factors"] for row in expected]


class InProcessBackends:
    """The risk and policy calls of `decide_batch`, made on actor classes in this process."""

    def __init__(self, policy_shards: int) -> None:
        self.scorer = RiskScorer(str(MODEL))
        self.policies = [PolicyActor(str(POLICIES), 43200, shard) for shard in range(policy_shards)]

    async def risk(self, method: str, *args):
        return await getattr(self.scorer, method)(*args)

    async def policy(self, shard: int, method: str, *args):
        return getattr(self.policies[shard], method)(*args)


def test_decide_batch_same_as_unpacked_calls():
    items = [
        make_item("alice", {"mgr_id": "1540", "role_rollup_1": "117961"}),
        make_item("bob", {"mgr_id": "1540"}, resource="amazon:4675", duration_s=43200),
        make_item("carol", {}, resource="postgres://prod/orders", hour_utc=23, device_posture="unmanaged"),
        make_item("alice", {"mgr_id": "1540", "role_rollup_1": "117961"}, now_ms=NOW_MS + 1000),
    ]
    backends = InProcessBackends(policy_shards=2)
    decisions = asyncio.run(decide_batch(backends, items, policy_shards=2))

    reference = InProcessBackends(policy_shards=2)
    risk = asyncio.run(reference.scorer.score_requests(risk_columns(items)))
    assert [decision["risk_score"] for decision in decisions] == risk["risk_score"]
    assert [decision["factors"] for decision in decisions] == risk["factors"]
    for item, decision, risk_score in zip(items, decisions, risk["risk_score"], strict=True):
        shard = policy_shard_of(item.resource, 2)
        [policy] = reference.policies[shard].decide([item.policy_input(risk_score)])
        assert decision["effect"] == policy["effect"]
        assert decision["reasons"] == policy["reasons"]
        assert decision["max_duration_s"] == policy["max_duration_s"]
        assert decision["policy_version"] == policy["policy_version"]
        assert decision["model_version"] == risk["model_version"]


class FakeService:
    """The parts of AccessService that the decisions route uses; records the bodies it gets."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(max_body_bytes=1_048_576, max_batch_body_bytes=8 * 1_048_576)
        self.bodies: list[DecisionBatchBody] = []

    def authenticate(self, authorization: str | None) -> ApiKey:
        return ApiKey(key_id="k", principal="alice", scopes=frozenset({"request"}), sha256="")

    async def decide_many(self, caller: ApiKey, body: DecisionBatchBody) -> dict:
        self.bodies.append(body)
        return {"decisions": [{"effect": "allow"} for _ in body.requests]}


def post(service: FakeService, content: bytes | AsyncIterator[bytes], content_type: str = "application/json") -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(lambda: service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(
                "/v1/decisions:batch", content=content,
                headers={"Content-Type": content_type, "Authorization": "Bearer x"},
            )

    return asyncio.run(run())


REQUEST = {"principal": "alice", "resource": "amazon:1", "role": "read", "duration_s": 600,
           "context": {"device_posture": "managed", "hour_utc": 3}}


def test_batch_route_validates_body():
    service = FakeService()
    response = post(service, json.dumps({"requests": [REQUEST, {**REQUEST, "principal": "bob"}]}).encode())
    assert response.status_code == 200, response.text
    assert response.json() == {"decisions": [{"effect": "allow"}, {"effect": "allow"}]}
    body = service.bodies[0]
    assert isinstance(body, DecisionBatchBody)
    assert [entry.principal for entry in body.requests] == ["alice", "bob"]
    assert body.requests[0].context.hour_utc == 3


@pytest.mark.parametrize(
    ("content", "field", "detail"),
    [
        (b"{not json", "body", "body: not valid JSON, Expecting property name enclosed in double quotes at character 1"),
        (json.dumps({"requests": [{**REQUEST, "duration_s": 0}]}).encode(), "requests.0.duration_s",
         "requests.0.duration_s: Input should be greater than 0 (got 0)"),
        (json.dumps({"requests": [{**REQUEST, "sudo": True}]}).encode(), "requests.0.sudo",
         "requests.0.sudo: Extra inputs are not permitted (got True)"),
        (b'{"requests": [{"principal": "a", "resource": "r", "role": "read", "duration_s": NaN}]}',
         "requests.0.duration_s", "requests.0.duration_s: Input should be a valid integer (got nan)"),
        (json.dumps({"requests": []}).encode(), "requests", None),
    ],
)
def test_batch_route_invalid_body_is_400(content, field, detail):
    service = FakeService()
    response = post(service, content)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["field"] == field
    if detail is not None:
        assert problem["detail"] == detail
    assert service.bodies == []


def test_batch_route_body_limit():
    """A batch body may pass the limit of single requests, up to the limit of batch bodies."""
    service = FakeService()
    large = json.dumps({"requests": [{**REQUEST, "principal_attributes": {"role_title": "t" * 200}}] * 5_000}).encode()
    assert service.settings.max_body_bytes < len(large) < service.settings.max_batch_body_bytes
    accepted = post(service, large)
    assert accepted.status_code == 200, accepted.text[:300]
    assert len(service.bodies[0].requests) == 5_000

    service.settings.max_batch_body_bytes = 1_048_576
    rejected = post(service, large)
    assert rejected.status_code == 413
    assert rejected.json()["code"] == "payload_too_large"
    assert rejected.json()["field"] == "body"
    assert rejected.json()["limit"] == 1_048_576
    assert rejected.json()["detail"].endswith("split the batch into smaller ones")
    assert len(service.bodies) == 1


def test_chunked_batch_body_over_limit():
    """A body sent without Content-Length is counted while it is read, with the same 413 problem."""
    service = FakeService()
    service.settings.max_batch_body_bytes = 1_048_576

    async def chunks():
        for _ in range(20):
            yield b"x" * 65_536

    rejected = post(service, chunks())
    assert rejected.status_code == 413
    assert rejected.json()["code"] == "payload_too_large"
    assert rejected.json()["field"] == "body"
    assert rejected.json()["limit"] == 1_048_576
    assert rejected.json()["detail"].endswith("split the batch into smaller ones")
    assert service.bodies == []


@pytest.mark.parametrize(
    ("content", "content_type", "field", "detail"),
    [
        (b'{"requests": [\xff]}', "application/json", "body", "byte 14 is not UTF-8"),
        (gzip.compress(b'{"requests": []}'), "application/json", "body", "is not UTF-8 (send uncompressed UTF-8 JSON)"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "body", "nested too deeply"),
        (json.dumps({"requests": [REQUEST]}).encode(), "text/plain", "Content-Type", "expected Content-Type application/json"),
    ],
)
def test_batch_route_unparsable_body_is_400(content, content_type, field, detail):
    service = FakeService()
    response = post(service, content, content_type)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["field"] == field
    assert detail in problem["detail"]
    assert service.bodies == []
