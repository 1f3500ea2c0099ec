"""Query and path parameters of the HTTP API, against a stub service."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest

from actors.domain.directory import ApiKey
from cluster.app import create_app


class FakeService:
    """The parts of AccessService that the list and read routes use; records the calls it gets."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(max_body_bytes=1_048_576, max_batch_body_bytes=8 * 1_048_576)
        self.calls: list[tuple[str, dict]] = []

    def authenticate(self, authorization: str | None) -> ApiKey:
        return ApiKey(key_id="k", principal="alice", scopes=frozenset({"request"}), sha256="")

    async def list_grants(self, caller: ApiKey, **filters) -> dict:
        self.calls.append(("list_grants", filters))
        return {"grants": [], "next": None}

    async def get_grant(self, caller: ApiKey, grant_id: str) -> dict:
        self.calls.append(("get_grant", {"grant_id": grant_id}))
        raise AssertionError("the stub has no grants")


def get(service: FakeService, url: str) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(lambda: service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(url, headers={"Authorization": "Bearer x"})

    return asyncio.run(run())


def test_list_route_known_parameters():
    service = FakeService()
    response = get(service, "/v1/grants?principal=alice&active=true&limit=5")
    assert response.status_code == 200, response.text
    assert service.calls == [("list_grants", {"principal": "alice", "active": True, "limit": 5, "after": None})]


@pytest.mark.parametrize("query", ["state=bogus", "principal=alice&actve=true", "limit=5&limit=6&x="])
def test_list_route_unknown_parameter_is_400(query):
    service = FakeService()
    response = get(service, f"/v1/grants?{query}")
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["field"].startswith("query.")
    assert problem["field"].removeprefix("query.") not in ("principal", "active", "limit", "after")
    assert "accepts active, after, limit, principal" in problem["detail"]
    assert service.calls == []


@pytest.mark.parametrize("grant_id", ["g" * 65, "grt_1;drop", "grt 1"])
def test_malformed_record_id_is_400(grant_id):
    service = FakeService()
    response = get(service, f"/v1/grants/{grant_id}")
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["field"] == "path.grant_id"
    assert len(response.text) < 1000
    assert service.calls == []
