"""The `jitgate` command line: argument errors, exit codes, output, and the server-side verbs' wiring."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from jitgate import cli
from jitgate.cli import _server_commands
from jitgate.cli._parser import parse_duration

NOW = "2025-03-01T10:00:00Z"
LATER = "2025-03-01T11:00:00Z"


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    for name in ("JITGATE_API_URL", "JITGATE_API_KEY", "JITGATE_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JITGATE_STATE_DIR", str(tmp_path / "state"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    exit_code = cli.main(list(argv))
    captured = capsys.readouterr()
    return exit_code, captured.out, captured.err


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("3600", 3600), ("1h", 3600), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("1d", 86400), (" 2H ", 7200)],
)
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "-5", "1.5h", "h", "30 m", "m30", "0", "0h"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_bad_duration_is_usage_error(capsys):
    exit_code, out, err = run_cli(capsys, "request", "db", "read", "--duration", "1x", "--reason", "r")

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert out == ""
    assert "'1x'" in line
    assert "30m, 1h" in line


@pytest.mark.parametrize("value", ["-5m", "-1"])
def test_negative_duration_separate_argument(capsys, value):
    exit_code, out, err = run_cli(capsys, "request", "db", "read", "--duration", value, "--reason", "r")

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert out == ""
    assert f"invalid duration '{value}': must be greater than 0 seconds" in line


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "abc"])
def test_invalid_replay_timeout(capsys, value):
    exit_code, out, err = run_cli(capsys, "replay", "--limit", "1", "--timeout", value)

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert out == ""
    assert f"invalid timeout '{value}'" in line
    assert "jitgate replay --help" in line


def test_missing_argument_is_usage_error(capsys):
    exit_code, _, err = run_cli(capsys, "review", "r-1", "approve")

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert "--reason" in line


def test_unknown_verb_is_usage_error(capsys):
    exit_code, _, err = run_cli(capsys, "launch")

    assert_one_error_line(err)
    assert exit_code == 2


def test_help_exits_zero(capsys):
    exit_code, out, _ = run_cli(capsys, "--help")

    assert exit_code == 0
    assert "replay" in out


# --- connection errors ------------------------------------------------------------------------


def test_unreachable_server_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("JITGATE_API_KEY", "jg_x")
    url = f"http://127.0.0.1:{closed_port()}"

    exit_code, out, err = run_cli(capsys, "--api-url", url, "request", "db", "read", "--duration", "1h", "--reason", "r")

    line = assert_one_error_line(err)
    assert exit_code == 1
    assert out == ""
    assert url in line
    assert "ConnectError" in line


def test_missing_credentials_is_one_line(capsys):
    exit_code, _, err = run_cli(capsys, "check", "alice", "db", "read")

    line = assert_one_error_line(err)
    assert exit_code == 1
    assert "JITGATE_API_KEY" in line
    assert "jitgate up" in line


def test_replay_missing_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JITGATE_API_KEY", "jg_x")
    missing = tmp_path / "nope.csv"

    exit_code, _, err = run_cli(capsys, "replay", "--file", str(missing))

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert str(missing) in line


def test_replay_bad_row_names_line_and_column(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JITGATE_API_KEY", "jg_x")
    path = tmp_path / "bad.csv"
    path.write_text(
        "id,RESOURCE,MGR_ID,ROLE_ROLLUP_1,ROLE_ROLLUP_2,ROLE_DEPTNAME,ROLE_TITLE,ROLE_FAMILY_DESC,ROLE_FAMILY,ROLE_CODE\n"
        "1,2,3,4,5,6,7,8,9,ten\n"
    )

    exit_code, _, err = run_cli(capsys, "replay", "--file", str(path))

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert "line 2, column ROLE_CODE" in line


def test_replay_unreachable_server(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JITGATE_API_KEY", "jg_x")
    path = tmp_path / "ok.csv"
    path.write_text(
        "id,RESOURCE,MGR_ID,ROLE_ROLLUP_1,ROLE_ROLLUP_2,ROLE_DEPTNAME,ROLE_TITLE,ROLE_FAMILY_DESC,ROLE_FAMILY,ROLE_CODE\n"
        "1,2,3,4,5,6,7,8,9,10\n"
    )

    exit_code, _, err = run_cli(
        capsys, "replay", "--file", str(path), "--api-url", f"http://127.0.0.1:{closed_port()}"
    )

    assert_one_error_line(err)
    assert exit_code == 1


@pytest.mark.parametrize("option", [["--rate", "fast"], ["--rate", "-1"], ["--concurrency", "0"], ["--limit", "x"]])
def test_replay_bad_options(capsys, option):
    exit_code, _, err = run_cli(capsys, "replay", *option)

    assert_one_error_line(err)
    assert exit_code == 2


# --- against a stub API server ----------------------------------------------------------------


def decision(effect: str) -> dict[str, Any]:
    return {
        "effect": effect,
        "reasons": ["risk 12 below the auto-approve threshold"],
        "risk_score": 12.0,
        "policy_version": "p1",
        "model_version": "m1",
        "required_approvals": 1 if effect == "review" else 0,
        "max_duration_s": 14400,
    }


def access_request(request_id: str, state: str, effect: str, resource: str = "db") -> dict[str, Any]:
    return {
        "id": request_id,
        "state": state,
        "submitter": "alice",
        "principal": "alice",
        "resource": resource,
        "role": "read",
        "duration_s": 3600,
        "reason": "debug",
        "context": {},
        "decision": decision(effect),
        "created_at": NOW,
        "updated_at": NOW,
        "version": 1,
    }


def grant(grant_id: str = "g-1", state: str = "active") -> dict[str, Any]:
    return {
        "id": grant_id,
        "request_id": "r-1",
        "principal": "alice",
        "resource": "db",
        "role": "read",
        "state": state,
        "granted_at": NOW,
        "expires_at": LATER,
        "provisioner": "noop",
        "version": 1,
    }


class ApiStub(BaseHTTPRequestHandler):
    received: list[tuple[str, str, dict[str, Any]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.received.append(("GET", url.path, parse_qs(url.query)))
        if url.path == "/v1/requests":
            self._send(200, {"items": [access_request("r-1", "pending", "review")], "next": None})
        elif url.path == "/v1/grants":
            self._send(200, {"items": [grant()], "next": None})
        elif url.path == "/healthz":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"code": "not_found", "detail": f"no such path {url.path}"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        self.received.append(("POST", self.path, body))
        if self.path == "/v1/check":
            allowed = body["principal"] == "alice"
            self._send(200, {"allowed": allowed, "grant_id": "g-1" if allowed else None, "expires_at": LATER if allowed else None})
        elif self.path == "/v1/requests":
            if body["duration_s"] > 43200:
                self._send(
                    400,
                    {
                        "code": "invalid_input",
                        "detail": "duration_s exceeds the global maximum",
                        "field": "duration_s",
                        "value": body["duration_s"],
                        "limit": 43200,
                    },
                )
            elif body["resource"] == "busy":
                self._send(409, {"code": "conflict", "detail": "entitlement already has an active grant", "grant_id": "g-7"})
            else:
                self._send(201, {"request": access_request("r-1", "approved", "allow"), "grant": grant()})
        elif self.path == "/v1/requests/r-1/reviews":
            self._send(200, {"request": access_request("r-1", "approved", "allow"), "grant": grant()})
        elif self.path == "/v1/grants/g-1/revoke":
            self._send(200, grant(state="revoking"))
        elif self.path == "/v1/grants/g-1/extend":
            self._send(200, grant())
        else:
            self._send(404, {"code": "not_found", "detail": f"no such path {self.path}"})


@pytest.fixture
def api_url(monkeypatch) -> Iterator[str]:
    ApiStub.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ApiStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("JITGATE_API_KEY", "jg_cli")
    monkeypatch.setenv("JITGATE_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_check_exit_codes(capsys, api_url):
    allowed_code, allowed_out, _ = run_cli(capsys, "check", "alice", "db", "read")
    denied_code, denied_out, denied_err = run_cli(capsys, "check", "mallory", "db", "read")

    assert allowed_code == 0
    assert allowed_out.startswith("allowed: grant g-1 until 2025-03-01T11:00:00Z")
    assert denied_code == 1
    assert denied_out.strip() == "not allowed"
    assert denied_err == ""


def test_request_sends_context_and_prints_grant(capsys, api_url):
    exit_code, out, _ = run_cli(
        capsys,
        "request",
        "db",
        "read",
        "--duration",
        "1h30m",
        "--reason",
        "debug",
        "--device",
        "managed",
        "--ticket",
        "INC-1",
        "--idempotency-key",
        "k-1",
    )

    body = ApiStub.received[-1][2]
    assert exit_code == 0
    assert body["duration_s"] == 5400
    assert body["context"] == {"source": "cli", "ticket": "INC-1", "device_posture": "managed"}
    assert "request r-1: approved" in out
    assert "grant g-1: active" in out


def test_request_json_output(capsys, api_url):
    exit_code, out, _ = run_cli(capsys, "request", "db", "read", "--duration", "30m", "--reason", "r", "--json")

    assert exit_code == 0
    assert json.loads(out)["grant"]["id"] == "g-1"


def test_server_invalid_input_shows_limit(capsys, api_url):
    exit_code, _, err = run_cli(capsys, "request", "db", "read", "--duration", "1d", "--reason", "r")

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert "limit=43200" in line
    assert "value=86400" in line


def test_conflict_names_grant(capsys, api_url):
    exit_code, _, err = run_cli(capsys, "request", "busy", "read", "--duration", "1h", "--reason", "r")

    line = assert_one_error_line(err)
    assert exit_code == 1
    assert "grant_id='g-7'" in line


def test_review_revoke_extend(capsys, api_url):
    review_code, review_out, _ = run_cli(capsys, "review", "r-1", "approve", "--reason", "ok", "--duration", "30m")
    review_body = ApiStub.received[-1][2]
    revoke_code, revoke_out, _ = run_cli(capsys, "revoke", "g-1", "--reason", "done")
    extend_code, _, _ = run_cli(capsys, "extend", "g-1", "--duration", "2h", "--reason", "more", "--device", "managed")
    extend_body = ApiStub.received[-1][2]

    assert (review_code, revoke_code, extend_code) == (0, 0, 0)
    assert review_body == {"decision": "approve", "reason": "ok", "duration_s": 1800}
    assert "request r-1: approved" in review_out
    assert "grant g-1: revoking" in revoke_out
    assert extend_body == {"duration_s": 7200, "reason": "more", "context": {"source": "cli", "device_posture": "managed"}}


def test_ls_requests_and_grants(capsys, api_url):
    requests_code, requests_out, _ = run_cli(capsys, "ls", "requests", "--state", "pending", "--principal", "alice")
    request_query = ApiStub.received[-1][2]
    grants_code, grants_out, _ = run_cli(capsys, "ls", "grants", "--active", "--json")
    grant_query = ApiStub.received[-1][2]

    assert requests_code == 0
    assert requests_out.splitlines()[0].split() == ["ID", "STATE", "DECISION", "PRINCIPAL", "RESOURCE", "ROLE", "DURATION", "CREATED"]
    assert "r-1" in requests_out
    assert request_query["state"] == ["pending"]
    assert grants_code == 0
    assert json.loads(grants_out)[0]["id"] == "g-1"
    assert grant_query["active"] == ["true"]


def test_ls_rejects_mixed_filters(capsys):
    exit_code, _, err = run_cli(capsys, "ls", "requests", "--active")

    assert_one_error_line(err)
    assert exit_code == 2


def test_global_options_after_verb(capsys, api_url, monkeypatch):
    monkeypatch.setenv("JITGATE_API_URL", f"http://127.0.0.1:{closed_port()}")

    exit_code, out, _ = run_cli(capsys, "check", "alice", "db", "read", "--api-url", api_url, "--json")

    assert exit_code == 0
    assert json.loads(out)["allowed"] is True


# --- server-side verbs ------------------------------------------------------------------------


class FakeStartupError(RuntimeError):
    pass


@pytest.fixture
def fake_server_modules(monkeypatch):
    """Replace the server modules with recorders; keep the real `cluster.settings`."""
    calls: list[tuple[str, Any]] = []

    report = types.SimpleNamespace(is_up=False, format=lambda: "part  state\nray   stopped")
    bootstrap = types.SimpleNamespace(
        StartupError=FakeStartupError,
        up=lambda settings, out=print: calls.append(("up", settings)) or {"api_url": "http://127.0.0.1:8000"},
        down=lambda settings, out=print: calls.append(("down", settings)),
        status=lambda settings: calls.append(("status", settings)) or report,
    )
    risk_cli = types.SimpleNamespace(
        train_main=lambda *args, **kwargs: calls.append(("train", (args, kwargs))) or 0,
        evaluate_main=lambda *args: calls.append(("evaluate", args)) or 0,
    )
    policy_cli = types.SimpleNamespace(
        validate_main=lambda bundle: calls.append(("validate", bundle)) or 0,
        test_main=lambda bundle: calls.append(("test", bundle)) or 1,
    )
    fakes = {"cluster.bootstrap": bootstrap, "actors.risk.cli": risk_cli, "actors.policy.cli": policy_cli}
    real_import = _server_commands.importlib.import_module

    def fake_import(name: str) -> Any:
        return fakes[name] if name in fakes else real_import(name)

    monkeypatch.setattr(_server_commands.importlib, "import_module", fake_import)
    return calls


def test_up_passes_port_and_dashboard(capsys, fake_server_modules):
    exit_code, _, _ = run_cli(capsys, "up", "--port", "8123", "--no-dashboard")

    verb, settings = fake_server_modules[0]
    assert exit_code == 0
    assert verb == "up"
    assert settings.http_port == 8123
    assert settings.dashboard is False


def test_up_rejects_bad_port(capsys, fake_server_modules):
    exit_code, _, err = run_cli(capsys, "up", "--port", "70000")

    assert_one_error_line(err)
    assert exit_code == 2
    assert fake_server_modules == []


def test_status_prints_report_and_exits_one_when_down(capsys, fake_server_modules):
    exit_code, out, _ = run_cli(capsys, "status")

    assert exit_code == 1
    assert "ray   stopped" in out


def test_down_calls_bootstrap(capsys, fake_server_modules):
    exit_code, _, _ = run_cli(capsys, "down")

    assert exit_code == 0
    assert fake_server_modules[0][0] == "down"


def test_startup_error_is_one_line(capsys, monkeypatch, fake_server_modules):
    def failing_up(settings, out=print):
        raise FakeStartupError("Ray head did not start; see /tmp/state/logs/ray.log")

    bootstrap = _server_commands.importlib.import_module("cluster.bootstrap")
    monkeypatch.setattr(bootstrap, "up", failing_up)

    exit_code, _, err = run_cli(capsys, "up")

    line = assert_one_error_line(err)
    assert exit_code == 1
    assert "ray.log" in line


def test_risk_and_policy_defaults(capsys, fake_server_modules, tmp_path):
    from cluster.settings import Settings

    data = tmp_path / "train.csv"
    train_code, _, _ = run_cli(capsys, "risk", "train", "--data", str(data), "--seed", "3")
    evaluate_code, _, _ = run_cli(capsys, "risk", "evaluate", "--data", str(data))
    validate_code, _, _ = run_cli(capsys, "policy", "validate")
    test_code, _, _ = run_cli(capsys, "policy", "test", "--bundle", str(tmp_path))

    assert (train_code, evaluate_code, validate_code, test_code) == (0, 0, 0, 1)
    assert fake_server_modules[0] == ("train", ((data, Settings().risk_model_path, 3), {}))
    assert fake_server_modules[1] == ("evaluate", (data, Settings().risk_model_path))
    assert fake_server_modules[2] == ("validate", Settings().policy_dir)
    assert fake_server_modules[3] == ("test", tmp_path)


def test_missing_server_extra(capsys, monkeypatch):
    def missing_ray(name: str) -> Any:
        raise ModuleNotFoundError("No module named 'ray'", name="ray")

    monkeypatch.setattr(_server_commands.importlib, "import_module", missing_ray)

    exit_code, _, err = run_cli(capsys, "status")

    line = assert_one_error_line(err)
    assert exit_code == 1
    assert line == "error: this command needs the server extra: pip install 'jitgate[server]'"


def test_unexpected_exception_is_one_line(capsys, monkeypatch, fake_server_modules):
    bootstrap = _server_commands.importlib.import_module("cluster.bootstrap")
    monkeypatch.setattr(bootstrap, "down", lambda settings, out=print: 1 / 0)

    exit_code, _, err = run_cli(capsys, "down")

    line = assert_one_error_line(err)
    assert exit_code == 1
    assert "ZeroDivisionError" in line


def test_risk_train_without_default_data(capsys, monkeypatch, fake_server_modules, tmp_path):
    monkeypatch.setattr(_server_commands, "DEFAULT_TRAIN_DATA", tmp_path / "absent.csv")

    exit_code, _, err = run_cli(capsys, "risk", "train")

    line = assert_one_error_line(err)
    assert exit_code == 2
    assert "--data" in line
    assert fake_server_modules == []

