"""Locust users for `python -m loadtests.failover`: paced access requests and deadline checks.

Run only by `loadtests.failover`, in a process of its own, because Locust monkey-patches the
standard library with gevent and must be imported before ray, redis or urllib3. The run is
described by a JSON plan file (`--jg-plan`) that the orchestrator writes:

    api_url, api_key            where to send requests, with the `replay` profile's key
    submissions                 [{"body": {...}, "idempotency_key": "..."}], sent in order
    submit_rate_per_s           submission k is sent at the earliest k / rate after the start
    check_offsets_ms            checks of each granted entitlement, relative to its expires_at
    output                      JSON-lines file of every response (see `_record`)
    started_file                created when the first user starts, so the orchestrator can
                                time its kill against the load

The run ends by itself when every submission got a response and every scheduled check was sent,
or at Locust's `--run-time`, whichever comes first.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task

FLUSH_INTERVAL_S = 0.5
IDLE_POLL_S = 0.005
NETWORK_TIMEOUT_S = 20.0
# A check due before the deadline is dropped when it could only be sent closer to the deadline
# than this, because its response would then arrive after expires_at and test nothing.
PRE_DEADLINE_MIN_LEAD_MS = 500
CONNECT_TIMEOUT_S = 5.0


class RunState:
    """State shared by all users of this Locust process (gevent runs them in one thread)."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] = {}
        self.started_s = 0.0
        self.next_submission = itertools.count()
        self.submissions_done = 0
        self.checks: list[tuple[float, int, dict[str, Any]]] = []
        self.check_sequence = itertools.count()
        self.checks_in_flight = 0
        self.records: list[dict[str, Any]] = []
        self.output = None
        self.background: list[gevent.Greenlet] = []

    def flush(self) -> None:
        if self.output is None or not self.records:
            return
        pending, self.records = self.records, []
        self.output.write("".join(json.dumps(record) + "\n" for record in pending))
        self.output.flush()

    @property
    def finished(self) -> bool:
        return (
            self.submissions_done >= len(self.plan.get("submissions", ()))
            and not self.checks
            and self.checks_in_flight == 0
        )


RUN = RunState()


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--jg-plan", type=str, default="", help="JSON plan file written by loadtests.failover.")


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs) -> None:
    plan_path = Path(environment.parsed_options.jg_plan)
    RUN.plan = json.loads(plan_path.read_text())
    RUN.output = open(RUN.plan["output"], "a", encoding="utf-8")
    RUN.started_s = time.time()
    Path(RUN.plan["started_file"]).write_text(f"{RUN.started_s}\n")

    def flush_forever() -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            RUN.flush()

    def quit_when_finished() -> None:
        # Runs outside the users, because a user that stops the runner would kill its own greenlet.
        while not RUN.finished:
            gevent.sleep(FLUSH_INTERVAL_S)
        environment.runner.quit()

    RUN.background = [gevent.spawn(flush_forever), gevent.spawn(quit_when_finished)]


@events.test_stop.add_listener
def _on_test_stop(environment, **_kwargs) -> None:
    for greenlet in RUN.background:
        if greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)
    RUN.flush()
    if RUN.output is not None:
        RUN.output.close()
        RUN.output = None


def _expires_ms(iso: str | None) -> int | None:
    if not iso:
        return None
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _base_record(kind: str, response, sent_ms: float) -> dict[str, Any]:
    status = int(response.status_code or 0)
    record: dict[str, Any] = {
        "kind": kind,
        "sent_ms": round(sent_ms, 1),
        "received_ms": round(time.time() * 1000, 1),
        "status": status,
        "retry_after": response.headers.get("Retry-After") if status else None,
        "replica": response.headers.get("X-Jitgate-Replica") if status else None,
    }
    if not status:
        record["error"] = repr(response.error)[:200]
    return record


def _json_body(response) -> dict[str, Any]:
    try:
        return json.loads(response.text or "{}")
    except ValueError:
        return {}


class Submitter(FastHttpUser):
    """Sends the plan's access requests at the plan's rate, and schedules checks for each grant."""

    fixed_count = 8
    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT_S
    connection_timeout = CONNECT_TIMEOUT_S

    @task
    def submit(self) -> None:
        plan = RUN.plan
        index = next(RUN.next_submission)
        if index >= len(plan["submissions"]):
            gevent.sleep(0.2)
            return
        due_s = RUN.started_s + index / plan["submit_rate_per_s"]
        delay_s = due_s - time.time()
        if delay_s > 0:
            gevent.sleep(delay_s)
        item = plan["submissions"][index]
        headers = {"Authorization": f"Bearer {plan['api_key']}", "Idempotency-Key": item["idempotency_key"]}
        sent_ms = time.time() * 1000
        response = self.client.post("/v1/requests", json=item["body"], headers=headers, name="POST /v1/requests")
        record = _base_record("submit", response, sent_ms)
        record.update(
            idempotency_key=item["idempotency_key"], principal=item["body"]["principal"], resource=item["body"]["resource"]
        )
        if record["status"] in (200, 201):
            result = _json_body(response)
            request, grant = result.get("request") or {}, result.get("grant")
            record.update(request_id=request.get("id"), state=request.get("state"))
            if grant:
                record.update(grant_id=grant["id"], grant_state=grant["state"], expires_ms=_expires_ms(grant["expires_at"]))
                self._schedule_checks(item["body"], record["expires_ms"], grant["id"])
        elif record["status"]:
            record["code"] = _json_body(response).get("code")
        RUN.records.append(record)
        RUN.submissions_done += 1

    @staticmethod
    def _schedule_checks(body: dict[str, Any], expires_ms: int, grant_id: str) -> None:
        check = {"principal": body["principal"], "resource": body["resource"], "role": body["role"],
                 "expires_ms": expires_ms, "grant_id": grant_id}
        for offset_ms in RUN.plan["check_offsets_ms"]:
            heapq.heappush(RUN.checks, (expires_ms + offset_ms, next(RUN.check_sequence), check))


class Checker(FastHttpUser):
    """Sends each scheduled `POST /v1/check` at its due time, never before it.

    A check due before the deadline that can no longer be sent at least
    PRE_DEADLINE_MIN_LEAD_MS ahead of it is recorded as `check_skipped` instead.
    """

    fixed_count = 16
    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT_S
    connection_timeout = CONNECT_TIMEOUT_S

    @task
    def check(self) -> None:
        if not RUN.checks:
            gevent.sleep(IDLE_POLL_S)
            return
        due_ms, _, check = RUN.checks[0]
        wait_s = (due_ms - time.time() * 1000) / 1000
        if wait_s > 0:
            gevent.sleep(min(wait_s, IDLE_POLL_S))
            return
        heapq.heappop(RUN.checks)
        now_ms = time.time() * 1000
        if due_ms < check["expires_ms"] and now_ms > check["expires_ms"] - PRE_DEADLINE_MIN_LEAD_MS:
            RUN.records.append({"kind": "check_skipped", "due_ms": due_ms, "expires_ms": check["expires_ms"],
                                "grant_id": check["grant_id"]})
            return
        RUN.checks_in_flight += 1
        try:
            body = {"principal": check["principal"], "resource": check["resource"], "role": check["role"]}
            headers = {"Authorization": f"Bearer {RUN.plan['api_key']}"}
            sent_ms = time.time() * 1000
            response = self.client.post("/v1/check", json=body, headers=headers, name="POST /v1/check")
            record = _base_record("check", response, sent_ms)
            record.update(due_ms=due_ms, expires_ms=check["expires_ms"], grant_id=check["grant_id"],
                          principal=check["principal"], resource=check["resource"])
            if record["status"] == 200:
                result = _json_body(response)
                record.update(allowed=result.get("allowed"), answer_grant_id=result.get("grant_id"))
            RUN.records.append(record)
        finally:
            RUN.checks_in_flight -= 1
