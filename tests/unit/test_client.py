"""Client and AsyncClient against httpx.MockTransport and a real HTTP server in a thread."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import jitgate
from jitgate import _config
from jitgate.errors import ERRORS_BY_CODE, HTTP_STATUS

NOW = "2025-03-01T10:00:00Z"
LATER = "2025-03-01T11:00:00Z"


def decision_json(effect: str = "allow") -> dict[str, Any]:
    return {
        "effect": effect,
        "reasons": ["low risk"],
        "risk_score": 12.5,
        "factors": [{"name": "device_posture", "weight": 0.2}],
        "policy_version": "p1",
        "model_version": "m1",
        "required_approvals": 0 if effect != "review" else 1,
        "max_duration_s": 14400,
    }


def request_json(request_id: str = "r-1", state: str = "approved", effect: str = "allow") -> dict[str, Any]:
    return {
        "id": request_id,
        "state": state,
        "submitter": "alice",
        "principal": "alice",
        "resource": "postgres://prod/orders",
        "role": "read",
        "duration_s": 3600,
        "reason": "debug",
        "context": {"source": "api"},
        "decision": decision_json(effect),
        "reviews": [],
        "grant_id": "g-1" if state == "approved" else None,
        "created_at": NOW,
        "updated_at": NOW,
        "version": 1,
    }


def grant_json(grant_id: str = "g-1", state: str = "active") -> dict[str, Any]:
    return {
        "id": grant_id,
        "request_id": "r-1",
        "principal": "alice",
        "resource": "postgres://prod/orders",
        "role": "read",
        "state": state,
        "granted_at": NOW,
        "expires_at": LATER,
        "provisioner": "noop",
        "version": 1,
    }


def result_json(effect: str = "allow") -> dict[str, Any]:
    state = {"allow": "approved", "deny": "denied", "review": "pending"}[effect]
    return {"request": request_json(state=state, effect=effect), "grant": grant_json() if effect == "allow" else None}


def audit_json(event_id: str = "a-1") -> dict[str, Any]:
    return {
        "id": event_id,
        "shard": 0,
        "at": NOW,
        "actor": "system",
        "key_id": "k1",
        "kind": "grant.expired",
        "subject": "g-1",
        "hash": "h1",
        "prev_hash": "h0",
    }


def problem(status: int, code: str, detail: str, **details: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": "x", "status": status, "code": code, "detail": detail, **details}
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


class Recorder:
    """MockTransport handler that records requests and responds from a route table."""

    def __init__(self, routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # Match the path as sent, so that a quoted id such as r%2F1 stays one path segment.
        path = request.url.raw_path.decode().partition("?")[0]
        handler = self.routes.get((request.method, path))
        if handler is None:
            return problem(404, "not_found", f"no route {request.method} {request.url.path}")
        return handler(request)

    def body(self, index: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[index].content)


def make_client(routes: dict, **options: Any) -> tuple[jitgate.Client, Recorder]:
    recorder = Recorder(routes)
    client = jitgate.Client("http://jitgate.test", "jg_secret", transport=httpx.MockTransport(recorder), **options)
    return client, recorder


def respond(status: int, payload: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=payload)


# --- MockTransport: every method --------------------------------------------------------------


def test_request_access_sends_body_and_generated_key():
    client, recorder = make_client({("POST", "/v1/requests"): respond(201, result_json())})

    result = client.request_access("postgres://prod/orders", "read", 3600, "debug incident")

    assert isinstance(result, jitgate.RequestResult)
    assert result.request.decision.effect is jitgate.Effect.ALLOW
    assert result.grant is not None and result.grant.id == "g-1"
    sent = recorder.requests[0]
    assert sent.headers["Authorization"] == "Bearer jg_secret"
    assert uuid.UUID(sent.headers["Idempotency-Key"]).version == 4
    body = recorder.body()
    assert body["resource"] == "postgres://prod/orders"
    assert body["duration_s"] == 3600
    assert body["context"]["source"] == "api"
    assert "principal" not in body


def test_request_access_passes_options():
    client, recorder = make_client({("POST", "/v1/requests"): respond(201, result_json("review"))})

    result = client.request_access(
        "amazon:1",
        "read",
        900,
        "replay",
        principal="emp-1",
        principal_attributes={"mgr_id": "5"},
        context={"source": "replay", "device_posture": "managed", "hour_utc": 9},
        idempotency_key="key-1",
    )

    assert result.request.state is jitgate.RequestState.PENDING
    assert result.grant is None
    assert recorder.requests[0].headers["Idempotency-Key"] == "key-1"
    body = recorder.body()
    assert body["principal"] == "emp-1"
    assert body["principal_attributes"] == {"mgr_id": "5"}
    assert body["context"] == {"source": "replay", "device_posture": "managed", "hour_utc": 9}


@pytest.mark.parametrize(
    "arguments, field",
    [
        (("db", "read", 0, "r"), "duration_s"),
        (("db", "read", 3600.0, "r"), "duration_s"),
        (("db", "Read!", 3600, "r"), "role"),
        (("db", "read", 3600, ""), "reason"),
    ],
)
def test_request_access_rejects_invalid_arguments_locally(arguments, field):
    client, recorder = make_client({})

    with pytest.raises(jitgate.InvalidInput) as caught:
        client.request_access(*arguments)

    assert caught.value.details["field"] == field
    assert recorder.requests == []


def test_long_rejected_value_is_shortened():
    client, recorder = make_client({})

    with pytest.raises(jitgate.InvalidInput) as caught:
        client.request_access("db", "read", 3600, "x" * 2_000_000)

    assert caught.value.details["field"] == "reason"
    assert len(caught.value.message) < 500
    assert caught.value.message.endswith("... (2000002 characters)")
    assert len(caught.value.details["value"]) < 300
    assert recorder.requests == []


def test_get_request_quotes_id():
    client, recorder = make_client({("GET", "/v1/requests/r%2F1"): respond(200, request_json("r/1"))})

    access_request = client.get_request("r/1")

    assert access_request.id == "r/1"
    assert recorder.requests[0].url.raw_path == b"/v1/requests/r%2F1"


def test_list_requests_follows_pages_until_limit():
    pages = {
        None: {"items": [request_json("r-1"), request_json("r-2")], "next": "c1"},
        "c1": {"items": [request_json("r-3"), request_json("r-4")], "next": "c2"},
    }
    client, recorder = make_client(
        {("GET", "/v1/requests"): lambda request: httpx.Response(200, json=pages[request.url.params.get("after")])}
    )

    items = client.list_requests(state=jitgate.RequestState.PENDING, principal="alice", limit=3)

    assert [item.id for item in items] == ["r-1", "r-2", "r-3"]
    first, second = (request.url.params for request in recorder.requests)
    assert first["state"] == "pending"
    assert first["principal"] == "alice"
    assert first["limit"] == "3"
    assert "reviewer" not in first
    assert second["after"] == "c1"
    assert second["limit"] == "1"


def test_list_requests_stops_on_last_page():
    client, recorder = make_client(
        {("GET", "/v1/requests"): respond(200, {"items": [request_json()], "next": None})}
    )

    items = client.list_requests(limit=None)

    assert len(items) == 1
    assert len(recorder.requests) == 1
    assert recorder.requests[0].url.params["limit"] == str(jitgate._client.PAGE_SIZE)


def test_list_grants_sends_active_flag():
    client, recorder = make_client({("GET", "/v1/grants"): respond(200, {"items": [grant_json()], "next": None})})

    grants = client.list_grants(principal="alice", active=True)

    assert grants[0].state is jitgate.GrantState.ACTIVE
    assert recorder.requests[0].url.params["active"] == "true"
    assert recorder.requests[0].url.params["principal"] == "alice"


def test_review_cancel_revoke_extend():
    client, recorder = make_client(
        {
            ("POST", "/v1/requests/r-1/reviews"): respond(200, result_json()),
            ("POST", "/v1/requests/r-1/cancel"): respond(200, request_json(state="cancelled")),
            ("POST", "/v1/grants/g-1/revoke"): respond(200, grant_json(state="revoking")),
            ("POST", "/v1/grants/g-1/extend"): respond(200, grant_json()),
        }
    )

    reviewed = client.review("r-1", "approve", "looks fine", duration_s=1800)
    cancelled = client.cancel("r-1")
    revoked = client.revoke("g-1", "incident over")
    extended = client.extend("g-1", 7200, "still debugging")

    assert reviewed.grant is not None
    assert cancelled.state is jitgate.RequestState.CANCELLED
    assert revoked.state is jitgate.GrantState.REVOKING
    assert extended.id == "g-1"
    assert recorder.body(0) == {"decision": "approve", "reason": "looks fine", "duration_s": 1800}
    assert recorder.body(1) == {}
    assert recorder.body(2) == {"reason": "incident over"}
    assert recorder.body(3) == {
        "duration_s": 7200, "reason": "still debugging", "context": {"device_posture": "unknown", "source": "api"}
    }


def test_review_rejects_unknown_decision():
    client, recorder = make_client({})

    with pytest.raises(jitgate.InvalidInput) as caught:
        client.review("r-1", "maybe", "unsure")

    assert caught.value.details["field"] == "decision"
    assert recorder.requests == []


def test_get_grant_and_credentials():
    client, _ = make_client(
        {
            ("GET", "/v1/grants/g-1"): respond(200, grant_json()),
            ("GET", "/v1/grants/g-1/credentials"): respond(
                200, {"username": "jit-g-1", "password": "pw", "target": "redis://127.0.0.1:6380"}
            ),
        }
    )

    assert client.get_grant("g-1").expires_at.isoformat() == "2025-03-01T11:00:00+00:00"
    assert client.credentials("g-1").username == "jit-g-1"


def test_check_and_check_batch():
    client, recorder = make_client(
        {
            ("POST", "/v1/check"): respond(200, {"allowed": True, "grant_id": "g-1", "expires_at": LATER}),
            ("POST", "/v1/check:batch"): respond(200, {"allowed": [True, False], "expires_at_ms": [1, 0]}),
        }
    )

    single = client.check("alice", "postgres://prod/orders", "read")
    batch = client.check_batch(["alice", "bob"], ["db", "db"], ["read", "read"])

    assert single.allowed is True
    assert single.grant_id == "g-1"
    assert batch.allowed == [True, False]
    assert recorder.body(0) == {"principal": "alice", "resource": "postgres://prod/orders", "role": "read"}
    assert recorder.body(1) == {"principals": ["alice", "bob"], "resources": ["db", "db"], "roles": ["read", "read"]}


def test_check_batch_rejects_uneven_columns():
    client, recorder = make_client({})

    with pytest.raises(jitgate.InvalidInput, match="same length"):
        client.check_batch(["alice"], ["db", "db"], ["read"])

    assert recorder.requests == []


def test_decide_batch_accepts_models_and_dicts():
    client, recorder = make_client(
        {("POST", "/v1/decisions:batch"): respond(200, {"decisions": [decision_json(), decision_json("deny")]})}
    )
    as_model = jitgate.DecisionInput(principal="alice", resource="db", role="read", duration_s=60)
    as_dict = {"principal": "bob", "resource": "db", "role": "write", "duration_s": 120}

    decisions = client.decide_batch([as_model, as_dict])

    assert [decision.effect for decision in decisions] == [jitgate.Effect.ALLOW, jitgate.Effect.DENY]
    sent = recorder.body()["requests"]
    assert sent[0]["principal"] == "alice"
    assert sent[1] == {"principal": "bob", "resource": "db", "role": "write", "duration_s": 120, "context": {"source": "api", "device_posture": "unknown"}}


def test_audit_returns_typed_page():
    client, recorder = make_client({("GET", "/v1/audit"): respond(200, {"items": [audit_json()], "next": "a-1"})})

    page = client.audit(shard=1, after="a-0", limit=10)

    assert isinstance(page.items[0], jitgate.AuditEvent)
    assert page.next == "a-1"
    assert dict(recorder.requests[0].url.params) == {"limit": "10", "shard": "1", "after": "a-0"}


def test_healthz_and_ready():
    client, _ = make_client(
        {
            ("GET", "/healthz"): respond(200, {"status": "ok"}),
            ("GET", "/readyz"): respond(503, {"status": "starting"}),
        }
    )

    assert client.healthz() is True
    assert client.ready() is False


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_problem_code_maps_to_error_class(code):
    error_class = ERRORS_BY_CODE[code]
    status = HTTP_STATUS[error_class]
    client, _ = make_client(
        {("GET", "/v1/grants/g-1"): lambda request: problem(status, code, "went wrong", field="id", grant_id="g-9")}
    )

    with pytest.raises(error_class) as caught:
        client.get_grant("g-1")

    assert type(caught.value) is error_class
    assert caught.value.status == status
    assert caught.value.message == "went wrong"
    assert caught.value.details["field"] == "id"
    assert caught.value.details["grant_id"] == "g-9"


def test_unavailable_reads_retry_after_header():
    client, _ = make_client(
        {
            ("POST", "/v1/check"): lambda request: httpx.Response(
                503, json={"code": "unavailable", "detail": "redis is down"}, headers={"Retry-After": "7"}
            )
        }
    )

    with pytest.raises(jitgate.Unavailable) as caught:
        client.check("alice", "db", "read")

    assert caught.value.retry_after_s == 7
    assert caught.value.status == 503
    assert caught.value.message == "redis is down"


def test_unavailable_prefers_retry_after_in_body():
    client, _ = make_client(
        {
            ("POST", "/v1/check"): lambda request: httpx.Response(
                503, json={"code": "unavailable", "detail": "busy", "retry_after_s": 3}, headers={"Retry-After": "9"}
            )
        }
    )

    with pytest.raises(jitgate.Unavailable) as caught:
        client.check("alice", "db", "read")

    assert caught.value.retry_after_s == 3


def test_error_without_problem_body_maps_by_status():
    client, _ = make_client(
        {
            ("GET", "/v1/grants/a"): lambda request: httpx.Response(404, text="nothing here"),
            ("GET", "/v1/grants/b"): lambda request: httpx.Response(500, text="boom"),
            ("GET", "/v1/grants/c"): lambda request: httpx.Response(503, text="proxy"),
        }
    )

    with pytest.raises(jitgate.NotFound, match="HTTP 404"):
        client.get_grant("a")
    with pytest.raises(jitgate.JitError) as caught:
        client.get_grant("b")
    with pytest.raises(jitgate.Unavailable) as unavailable:
        client.get_grant("c")

    assert type(caught.value) is jitgate.JitError
    assert caught.value.status == 500
    assert unavailable.value.retry_after_s == 1


def test_fastapi_validation_error_maps_to_invalid_input():
    detail = [{"loc": ["body", "duration_s"], "msg": "Input should be a valid integer", "type": "int_type"}]
    client, _ = make_client({("POST", "/v1/requests"): respond(422, {"detail": detail})})

    with pytest.raises(jitgate.InvalidInput) as caught:
        client.request_access("db", "read", 60, "r")

    assert caught.value.details["field"] == "duration_s"
    assert "valid integer" in caught.value.message


def test_transport_error_names_url_and_cause():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = jitgate.Client("http://jitgate.test:8000", "k", transport=httpx.MockTransport(refuse))

    with pytest.raises(jitgate.Unavailable) as caught:
        client.get_request("r-1")

    assert "http://jitgate.test:8000/v1/requests/r-1" in caught.value.message
    assert "connection refused" in caught.value.message
    assert caught.value.status is None


def test_timeout_names_timeout():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = jitgate.Client("http://jitgate.test", "k", timeout_s=2.5, transport=httpx.MockTransport(slow))

    with pytest.raises(jitgate.Unavailable, match="timed out after 2.5 s"):
        client.healthz()


def test_client_rejects_bad_base_url():
    with pytest.raises(jitgate.InvalidInput, match="base_url"):
        jitgate.Client("127.0.0.1:8000")


def test_client_repr_hides_key():
    with jitgate.Client("http://127.0.0.1:8000/", "jg_secret") as client:
        assert "jg_secret" not in repr(client)
        assert client.base_url == "http://127.0.0.1:8000"


# --- AsyncClient ------------------------------------------------------------------------------


def test_async_client_methods():
    recorder = Recorder(
        {
            ("POST", "/v1/requests"): respond(201, result_json()),
            ("GET", "/v1/requests"): respond(200, {"items": [request_json()], "next": None}),
            ("POST", "/v1/check"): respond(200, {"allowed": False}),
            ("GET", "/v1/grants/g-1"): lambda request: problem(404, "not_found", "no grant g-1"),
            ("GET", "/readyz"): respond(200, {"status": "ready"}),
        }
    )

    async def scenario() -> dict[str, Any]:
        async with jitgate.AsyncClient("http://jitgate.test", "k", transport=httpx.MockTransport(recorder)) as client:
            outcome: dict[str, Any] = {
                "result": await client.request_access("db", "read", 60, "r", idempotency_key="k1"),
                "listed": await client.list_requests(limit=5),
                "check": await client.check("alice", "db", "read"),
                "ready": await client.ready(),
            }
            try:
                await client.get_grant("g-1")
            except jitgate.NotFound as error:
                outcome["error"] = error
            return outcome

    outcome = asyncio.run(scenario())

    assert outcome["result"].request.id == "r-1"
    assert [item.id for item in outcome["listed"]] == ["r-1"]
    assert outcome["check"].allowed is False
    assert outcome["ready"] is True
    assert outcome["error"].status == 404
    assert recorder.requests[0].headers["Idempotency-Key"] == "k1"


def test_async_client_transport_error():
    async def scenario() -> None:
        async with jitgate.AsyncClient("http://127.0.0.1:%d" % closed_port()) as client:
            await client.healthz()

    with pytest.raises(jitgate.Unavailable, match="ConnectError"):
        asyncio.run(scenario())


# --- configuration ----------------------------------------------------------------------------

CREDENTIALS_FLOW = """\
# written by jitgate up
api_url: http://127.0.0.1:8123
profiles:
  admin:  {key: "jg_admin", principal: admin}   # scopes: all
  replay: {key: 'jg_replay', principal: replay-bot}
"""

CREDENTIALS_BLOCK = """\
api_url: "http://127.0.0.1:8123"
profiles:
  admin:
    key: jg_admin
    principal: admin
  replay:
    key: jg_replay
    principal: replay-bot
"""


def test_from_environment_prefers_env_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("JITGATE_API_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("JITGATE_API_KEY", "jg_env")
    monkeypatch.setenv("JITGATE_STATE_DIR", str(tmp_path))
    (tmp_path / "credentials.yaml").write_text(CREDENTIALS_FLOW)

    connection = _config.resolve_connection("replay")

    assert connection.api_url == "http://127.0.0.1:9999"
    assert connection.api_key == "jg_env"
    assert connection.source == "JITGATE_API_KEY"


@pytest.mark.parametrize("text", [CREDENTIALS_FLOW, CREDENTIALS_BLOCK], ids=["flow", "block"])
@pytest.mark.parametrize("with_pyyaml", [True, False], ids=["pyyaml", "fallback"])
def test_from_environment_reads_credentials_profile(monkeypatch, tmp_path, text, with_pyyaml):
    monkeypatch.delenv("JITGATE_API_URL", raising=False)
    monkeypatch.delenv("JITGATE_API_KEY", raising=False)
    monkeypatch.delenv("JITGATE_PROFILE", raising=False)
    monkeypatch.setenv("JITGATE_STATE_DIR", str(tmp_path))
    if not with_pyyaml:
        monkeypatch.setitem(sys.modules, "yaml", None)
    (tmp_path / "credentials.yaml").write_text(text)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200, json={"status": "ok"})

    admin = jitgate.Client.from_environment(transport=httpx.MockTransport(handler))
    replay = jitgate.Client.from_environment("replay", transport=httpx.MockTransport(handler))
    admin.healthz()
    replay.healthz()

    assert admin.base_url == "http://127.0.0.1:8123"
    assert seen == ["Bearer jg_admin", "Bearer jg_replay"]
    assert _config.load_credentials(tmp_path / "credentials.yaml").profiles["replay"].principal == "replay-bot"


def test_from_environment_uses_profile_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("JITGATE_API_KEY", raising=False)
    monkeypatch.setenv("JITGATE_PROFILE", "replay")
    monkeypatch.setenv("JITGATE_STATE_DIR", str(tmp_path))
    (tmp_path / "credentials.yaml").write_text(CREDENTIALS_FLOW)

    assert _config.resolve_connection().api_key == "jg_replay"


def test_from_environment_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("JITGATE_API_KEY", raising=False)
    monkeypatch.setenv("JITGATE_STATE_DIR", str(tmp_path))

    with pytest.raises(jitgate.Unauthenticated, match="jitgate up"):
        jitgate.Client.from_environment()


def test_from_environment_unknown_profile(monkeypatch, tmp_path):
    monkeypatch.delenv("JITGATE_API_KEY", raising=False)
    monkeypatch.setenv("JITGATE_STATE_DIR", str(tmp_path))
    (tmp_path / "credentials.yaml").write_text(CREDENTIALS_FLOW)

    with pytest.raises(jitgate.Unauthenticated, match="profile 'carol' not found") as caught:
        jitgate.Client.from_environment("carol")

    assert "admin, replay" in caught.value.message


@pytest.mark.parametrize(
    "text, message",
    [
        ("profiles:\n  admin: {key: jg}\n\tbad: x\n", "line 3"),
        ("profiles: [a, b]\n", "line 1"),
        ("api_url http://x\n", "line 1"),
        ("profiles:\n  admin:\n    principal: admin\n", "needs a non-empty key"),
    ],
)
def test_fallback_parser_reports_bad_files(monkeypatch, tmp_path, text, message):
    monkeypatch.setitem(sys.modules, "yaml", None)
    path = tmp_path / "credentials.yaml"
    path.write_text(text)

    with pytest.raises(jitgate.InvalidInput, match=message):
        _config.load_credentials(path)


# --- a real HTTP server in a thread -----------------------------------------------------------


class StubHandler(BaseHTTPRequestHandler):
    """Tiny stand-in for the API: enough routes to exercise real sockets, headers and paging."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        content_type = "application/problem+json" if status >= 400 else "application/json"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/healthz":
            self._send(200, {"status": "ok"})
        elif url.path == "/readyz":
            self._send(503, {"code": "unavailable", "detail": "starting"}, {"Retry-After": "2"})
        elif url.path == "/v1/requests":
            after = query.get("after", [None])[0]
            if after is None:
                self._send(200, {"items": [request_json("r-1")], "next": "cursor-1"})
            else:
                self._send(200, {"items": [request_json("r-2")], "next": None})
        elif url.path == "/v1/grants/busy":
            self._send(503, {"code": "unavailable", "detail": "ledger shard restarting"}, {"Retry-After": "4"})
        else:
            self._send(404, {"code": "not_found", "detail": f"no such path {url.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.headers.get("Authorization") != "Bearer jg_real":
            self._send(401, {"code": "unauthenticated", "detail": "unknown API key"})
        elif self.path == "/v1/requests":
            if body["resource"] == "busy-db":
                self._send(409, {"code": "conflict", "detail": "active grant exists", "grant_id": "g-7"})
            else:
                result = result_json()
                result["request"]["reason"] = body["reason"]
                result["request"]["context"] = {"idempotency_key": self.headers.get("Idempotency-Key")}
                self._send(201, result)
        else:
            self._send(404, {"code": "not_found", "detail": f"no such path {self.path}"})


@pytest.fixture
def stub_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_server_sync(stub_server):
    with jitgate.Client(stub_server, "jg_real") as client:
        result = client.request_access("db", "read", 60, "real socket", idempotency_key="idem-1")
        listed = client.list_requests(limit=None)
        healthy = client.healthz()
        ready = client.ready()
        with pytest.raises(jitgate.Conflict) as conflict:
            client.request_access("busy-db", "read", 60, "again")
        with pytest.raises(jitgate.Unavailable) as unavailable:
            client.get_grant("busy")

    assert result.request.reason == "real socket"
    assert result.request.context == {"idempotency_key": "idem-1"}
    assert [item.id for item in listed] == ["r-1", "r-2"]
    assert healthy is True
    assert ready is False
    assert conflict.value.details["grant_id"] == "g-7"
    assert conflict.value.status == 409
    assert unavailable.value.retry_after_s == 4


def test_real_server_rejects_wrong_key(stub_server):
    with jitgate.Client(stub_server, "jg_wrong") as client:
        with pytest.raises(jitgate.Unauthenticated, match="unknown API key"):
            client.check("alice", "db", "read")


def test_real_server_async(stub_server):
    async def scenario() -> tuple[list[jitgate.RequestResult], list[jitgate.AccessRequest]]:
        async with jitgate.AsyncClient(stub_server, "jg_real") as client:
            results = await asyncio.gather(*(client.request_access("db", "read", 60, f"r{i}") for i in range(8)))
            listed = await client.list_requests()
            return list(results), listed

    results, listed = asyncio.run(scenario())

    assert sorted(result.request.reason for result in results) == [f"r{i}" for i in range(8)]
    assert len({result.request.context["idempotency_key"] for result in results}) == 8
    assert len(listed) == 2


def test_unreachable_server_raises_unavailable():
    url = f"http://127.0.0.1:{closed_port()}"

    with jitgate.Client(url, "k", timeout_s=2.0) as client:
        with pytest.raises(jitgate.Unavailable) as caught:
            client.get_request("r-1")

    assert url in caught.value.message
    assert "ConnectError" in caught.value.message
