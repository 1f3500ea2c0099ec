"""Replay: log parsing, the row-to-request mapping, the summary maths and runs against MockTransport."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

import jitgate
from jitgate import replay
from jitgate._config import Connection

HEADER_ID = "id,RESOURCE,MGR_ID,ROLE_ROLLUP_1,ROLE_ROLLUP_2,ROLE_DEPTNAME,ROLE_TITLE,ROLE_FAMILY_DESC,ROLE_FAMILY,ROLE_CODE"
HEADER_ACTION = HEADER_ID.replace("id,", "ACTION,", 1)
ROW_1 = "1,78766,72734,118079,118080,117878,117879,118177,19721,117880"
ROW_2 = "2,40644,4378,117961,118327,118507,118863,122008,118398,118865"
ATTRIBUTES_1 = ("72734", "118079", "118080", "117878", "117879", "118177", "19721", "117880")

CONNECTION = Connection(api_url="http://jitgate.test", api_key="jg_replay", profile="replay", source="test")


def write_log(tmp_path: Path, *lines: str, name: str = "requests.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# --- reading ----------------------------------------------------------------------------------


def test_read_log_with_id_column(tmp_path):
    rows = replay.read_log(write_log(tmp_path, HEADER_ID, ROW_1, ROW_2))

    assert [row.row_id for row in rows] == ["1", "2"]
    assert rows[0].resource == "78766"
    assert rows[0].attributes == ATTRIBUTES_1
    assert rows[1].line == 3


def test_read_log_with_action_column_numbers_rows(tmp_path):
    rows = replay.read_log(write_log(tmp_path, HEADER_ACTION, "1" + ROW_1[1:], "0" + ROW_2[1:]))

    assert [row.row_id for row in rows] == ["1", "2"]
    assert rows[1].resource == "40644"


def test_read_log_honours_limit_and_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_text("\ufeff" + "\n".join([HEADER_ID, ROW_1, ROW_2]) + "\n", encoding="utf-8")

    rows = replay.read_log(path, limit=1)

    assert len(rows) == 1


@pytest.mark.parametrize(
    "lines, expected",
    [
        ((), "line 1: empty file"),
        (("id,RESOURCE,MGR_ID",), "line 1: unexpected header"),
        ((HEADER_ID, ROW_1, "3,1,2,3"), "line 3: expected 10 columns, got 4"),
        ((HEADER_ID, ROW_1, ROW_2.replace("4378", "x43")), "line 3, column MGR_ID: expected a non-negative integer, got 'x43'"),
        ((HEADER_ID, ROW_1.replace(",117880", ",")), "line 2, column ROLE_CODE"),
    ],
)
def test_read_log_names_file_line_and_column(tmp_path, lines, expected):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))

    with pytest.raises(jitgate.InvalidInput) as caught:
        replay.read_log(path)

    assert str(path) in caught.value.message
    assert expected in caught.value.message


def test_read_log_missing_file(tmp_path):
    with pytest.raises(jitgate.InvalidInput, match="access log file not found"):
        replay.read_log(tmp_path / "absent.csv")


def test_shipped_log_header_is_accepted():
    if not replay.DEFAULT_LOG_PATH.is_file():
        pytest.skip(f"{replay.DEFAULT_LOG_PATH} is not present")

    rows = replay.read_log(replay.DEFAULT_LOG_PATH, limit=5)

    assert len(rows) == 5


# --- mapping ----------------------------------------------------------------------------------


def test_principal_id_is_sha256_of_joined_attributes():
    expected = "emp-" + hashlib.sha256("|".join(ATTRIBUTES_1).encode()).hexdigest()[:12]

    assert replay.principal_id(ATTRIBUTES_1) == expected


def test_same_attributes_give_same_principal():
    first = replay.LogRow("1", "10", ATTRIBUTES_1)
    second = replay.LogRow("99", "20", ATTRIBUTES_1)
    other = replay.LogRow("3", "10", ATTRIBUTES_1[:-1] + ("1",))

    assert replay.plan_request(first).principal == replay.plan_request(second).principal
    assert replay.plan_request(first).principal != replay.plan_request(other).principal


def test_plan_request_fields():
    planned = replay.plan_request(replay.LogRow("42", "78766", ATTRIBUTES_1), seed=7)

    assert planned.resource == "amazon:78766"
    assert planned.role == "read"
    assert planned.reason == "replay of access log row 42"
    assert planned.idempotency_key == "replay-7-42"
    assert planned.context.source == "replay"
    assert planned.principal_attributes == {
        "mgr_id": "72734",
        "role_rollup_1": "118079",
        "role_rollup_2": "118080",
        "role_deptname": "117878",
        "role_title": "117879",
        "role_family_desc": "118177",
        "role_family": "19721",
        "role_code": "117880",
    }
    # The request must pass the wire model's checks.
    jitgate.AccessRequestCreate(
        principal=planned.principal,
        principal_attributes=planned.principal_attributes,
        resource=planned.resource,
        role=planned.role,
        duration_s=planned.duration_s,
        reason=planned.reason,
        context=planned.context,
    )


def test_plan_request_is_deterministic_for_a_seed():
    rows = replay.synthetic_log(200, seed=1)

    first = [replay.plan_request(row, seed=7) for row in rows]
    again = [replay.plan_request(row, seed=7) for row in rows]
    other_seed = [replay.plan_request(row, seed=8) for row in rows]

    assert first == again
    assert [plan.context for plan in first] != [plan.context for plan in other_seed]
    assert {plan.idempotency_key.split("-")[1] for plan in other_seed} == {"8"}


def test_context_distribution_follows_weights():
    plans = [replay.plan_request(replay.LogRow(str(i), "1", ATTRIBUTES_1), seed=7) for i in range(4000)]
    postures = Counter(plan.context.device_posture.value for plan in plans)
    hours = Counter(plan.context.hour_utc for plan in plans)
    durations = Counter(plan.duration_s for plan in plans)

    assert 0.80 < postures["managed"] / len(plans) < 0.90
    assert 0.07 < postures["unmanaged"] / len(plans) < 0.13
    assert 0.02 < postures["unknown"] / len(plans) < 0.08
    assert set(hours) <= set(range(24))
    assert sum(hours[hour] for hour in range(8, 18)) > len(plans) / 2
    assert set(durations) == {900, 1800, 3600, 7200, 14400}


def test_synthetic_log_is_repeatable_and_repeats_principals():
    rows = replay.synthetic_log(3000, seed=7)

    assert rows == replay.synthetic_log(3000, seed=7)
    assert rows != replay.synthetic_log(3000, seed=8)
    assert [row.row_id for row in rows[:3]] == ["1", "2", "3"]
    assert all(len(row.attributes) == 8 and row.resource.isdigit() for row in rows)
    assert len({row.attributes for row in rows}) < len(rows)


# --- summary maths ----------------------------------------------------------------------------


def test_percentile_nearest_rank():
    values = [float(value) for value in range(100, 0, -1)]

    assert replay.percentile_nearest_rank(values, 50) == 50.0
    assert replay.percentile_nearest_rank(values, 99) == 99.0
    assert replay.percentile_nearest_rank(values, 100) == 100.0
    assert replay.percentile_nearest_rank([7.0], 99) == 7.0
    assert replay.percentile_nearest_rank([], 50) is None


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError):
        replay.percentile_nearest_rank([1.0], 0)


def test_summary_counts_and_throughput():
    summary = replay.Summary(source="x.csv", seed=7)
    summary.effects.update({"allow": 6, "deny": 2, "review": 1})
    summary.already_active = 1
    summary.errors.update({"503 unavailable": 2})
    summary.latencies_ms = [10.0, 20.0, 30.0, 40.0]
    summary.elapsed_s = 2.0

    data = summary.to_dict()

    assert data["completed"] == 12
    assert data["allow"] == 6
    assert data["already_active"] == 1
    assert data["errors"] == 2
    assert data["errors_by_kind"] == {"503 unavailable": 2}
    assert data["throughput_per_s"] == 6.0
    assert data["latency_p50_ms"] == 20.0
    assert data["latency_p99_ms"] == 40.0
    text = summary.format_text()
    assert "allow           6 (50.0%)" in text
    assert "503 unavailable: 2" in text


def test_summary_without_requests():
    summary = replay.Summary(source="synthetic", seed=7, synthetic=True)

    assert summary.throughput_per_s == 0.0
    assert "p50 n/a" in summary.format_text()
    assert "synthetic stream" in summary.format_text()


def test_error_kind():
    answered = jitgate.Unavailable("busy")
    answered.status = 503
    unanswered = jitgate.Unavailable("refused", cause="ConnectError")
    unanswered.status = None

    assert replay.error_kind(answered) == "503 unavailable"
    assert replay.error_kind(unanswered) == "no response (ConnectError)"


# --- runs against MockTransport ---------------------------------------------------------------


def result_for(effect: str, resource: str) -> dict[str, Any]:
    state = {"allow": "approved", "deny": "denied", "review": "pending"}[effect]
    decision = {
        "effect": effect,
        "reasons": [],
        "risk_score": 1.0,
        "policy_version": "p",
        "model_version": "m",
        "max_duration_s": 3600,
    }
    request = {
        "id": "r-" + resource,
        "state": state,
        "submitter": "replay-bot",
        "principal": "emp-1",
        "resource": resource,
        "role": "read",
        "duration_s": 900,
        "reason": "replay",
        "context": {},
        "decision": decision,
        "created_at": "2025-03-01T10:00:00Z",
        "updated_at": "2025-03-01T10:00:00Z",
        "version": 1,
    }
    return {"request": request, "grant": None}


class ReplayServer:
    """Respond by the last digit of the resource: 0-4 allow, 5-6 deny, 7 review, 8 active grant, 9 error."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        body = json.loads(request.content)
        self.keys.append(request.headers["Idempotency-Key"])
        self.bodies.append(body)
        digit = int(body["resource"][-1])
        if digit <= 4:
            return httpx.Response(201, json=result_for("allow", body["resource"]))
        if digit <= 6:
            return httpx.Response(201, json=result_for("deny", body["resource"]))
        if digit == 7:
            return httpx.Response(201, json=result_for("review", body["resource"]))
        if digit == 8:
            return httpx.Response(409, json={"code": "conflict", "detail": "active grant", "grant_id": "g-1"})
        return httpx.Response(503, json={"code": "unavailable", "detail": "busy"}, headers={"Retry-After": "1"})


def rows_with_resources(resources: list[int]) -> list[replay.LogRow]:
    return [replay.LogRow(str(i + 1), str(resource), ATTRIBUTES_1) for i, resource in enumerate(resources)]


def test_replay_counts_outcomes(monkeypatch):
    monkeypatch.setattr(replay, "RETRY_MAX_WAIT_S", 0)
    server = ReplayServer()
    rows = rows_with_resources(list(range(100, 120)))

    async def scenario() -> replay.Summary:
        async with jitgate.AsyncClient("http://jitgate.test", "k", transport=httpx.MockTransport(server)) as client:
            return await replay.replay(rows, client, replay.Summary(source="t", seed=7), concurrency=4)

    summary = asyncio.run(scenario())

    assert summary.effects == Counter({"allow": 10, "deny": 4, "review": 2})
    assert summary.already_active == 2
    assert summary.errors == Counter({"503 unavailable": 2})
    assert summary.completed == 20
    assert len(summary.latencies_ms) == 20
    # The two rows that keep getting 503 are sent MAX_ATTEMPTS times each, with the same key.
    assert summary.retries == 2 * (replay.MAX_ATTEMPTS - 1)
    assert len(server.keys) == 20 + summary.retries
    assert set(server.keys) == {f"replay-7-{i}" for i in range(1, 21)}
    assert server.bodies[0]["principal"].startswith("emp-")
    assert server.bodies[0]["principal_attributes"]["mgr_id"] == "72734"


def test_replay_stops_when_server_gone(monkeypatch):
    monkeypatch.setattr(replay, "MAX_CONSECUTIVE_TRANSPORT_ERRORS", 3)
    monkeypatch.setattr(replay, "RETRY_MAX_WAIT_S", 0)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def scenario() -> replay.Summary:
        async with jitgate.AsyncClient("http://jitgate.test", "k", transport=httpx.MockTransport(refuse)) as client:
            rows = rows_with_resources(list(range(50)))
            return await replay.replay(rows, client, replay.Summary(source="t", seed=7), concurrency=1)

    summary = asyncio.run(scenario())

    assert summary.stopped_reason is not None
    assert summary.submitted == 3
    assert summary.errors == Counter({"no response (ConnectError)": 3})


def test_replay_rejects_bad_options():
    async def scenario(**options: Any) -> None:
        async with jitgate.AsyncClient("http://jitgate.test") as client:
            await replay.replay([], client, replay.Summary(source="t", seed=7), **options)

    with pytest.raises(jitgate.InvalidInput, match="concurrency"):
        asyncio.run(scenario(concurrency=0))
    with pytest.raises(jitgate.InvalidInput, match="rate"):
        asyncio.run(scenario(rate_per_s=-1.0))


def test_run_prints_summary_and_fails_on_errors(tmp_path):
    path = write_log(tmp_path, HEADER_ID, *(f"{i},{100 + i},{ROW_1.split(',', 2)[2]}" for i in range(1, 11)))
    stdout, stderr = io.StringIO(), io.StringIO()

    exit_code = replay.run(
        CONNECTION, file=path, rate_per_s=0, stdout=stdout, stderr=stderr, transport=httpx.MockTransport(ReplayServer())
    )

    assert exit_code == 1
    assert "errors          1" in stdout.getvalue()
    assert "already_active  1" in stdout.getvalue()
    assert "replay requests.csv [" in stderr.getvalue()


def test_run_succeeds_without_errors_and_prints_json(tmp_path):
    path = write_log(tmp_path, HEADER_ID, *(f"{i},{100 + i},{ROW_1.split(',', 2)[2]}" for i in range(1, 6)))
    stdout, stderr = io.StringIO(), io.StringIO()

    exit_code = replay.run(
        CONNECTION,
        file=path,
        rate_per_s=1000.0,
        json_output=True,
        stdout=stdout,
        stderr=stderr,
        transport=httpx.MockTransport(ReplayServer()),
    )

    data = json.loads(stdout.getvalue())
    assert exit_code == 0
    assert data["completed"] == 5
    assert data["allow"] == 4
    assert data["synthetic"] is False


def test_run_falls_back_to_synthetic_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(replay, "DEFAULT_LOG_PATH", tmp_path / "absent.csv")
    server = ReplayServer()
    stdout, stderr = io.StringIO(), io.StringIO()

    replay.run(
        CONNECTION, limit=30, json_output=True, stdout=stdout, stderr=stderr, transport=httpx.MockTransport(server)
    )

    data = json.loads(stdout.getvalue())
    assert "absent.csv not found" in stderr.getvalue()
    assert "replay synthetic [" in stderr.getvalue()
    assert data["synthetic"] is True
    assert data["source"] == "synthetic"
    assert data["completed"] == 30
    assert len(set(server.keys)) == 30


def test_run_raises_when_server_unreachable(tmp_path):
    path = write_log(tmp_path, HEADER_ID, ROW_1)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(jitgate.Unavailable, match="http://jitgate.test/healthz"):
        replay.run(CONNECTION, file=path, stdout=io.StringIO(), stderr=io.StringIO(), transport=httpx.MockTransport(refuse))


def test_progress_bar_redraws_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    summary = replay.Summary(source="t", seed=7)
    summary.effects["allow"] = 5
    bar = replay.ProgressBar(10, "replay t", stream, interval_s=0.0)

    bar.update(summary)
    bar.finish(summary)

    assert stream.getvalue().startswith("\rreplay t [############------------] 5/10  50%")
    assert stream.getvalue().endswith("\n")
