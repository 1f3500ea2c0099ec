"""Locust load for the jitgate API: replayed access requests or single checks at a fixed rate.

`loadtests.bench` runs it headless in a process of its own (Locust patches the standard
library with gevent on import, which breaks when ray or redis were imported first):

    locust -f loadtests/locustfile.py --headless -u 32 -r 32 -t 12s --host http://127.0.0.1:8000 \\
        --jg-bodies bodies.tsv --jg-key KEY --jg-rps 400 --jg-offset 0 --jg-tag run1 --jg-out out.json

Each line of the bodies file is `<path>\\t<JSON body>`, sent as a POST, or `<path>` alone,
sent as a GET; the paths used are `/v1/requests`, `/v1/check` and `/healthz`. The users
share one row counter, so every request takes the next row, starting at row `--jg-offset`
and wrapping around at the end of the file. A request to `/v1/requests`
carries `Idempotency-Key: bench-<tag>-<row counter>`, so each one is a new submission. A 409
(the entitlement already has an active grant) counts as a success, because that is the
service's response to a repeated request, not a failure.

At the end the latency of every request is written to `--jg-out` as JSON: `start_s` (epoch
seconds), `latency_ms`, `ok` (bool) and `status` (counts per HTTP status).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import gevent
from locust import FastHttpUser, events, task

HEADER_CONTENT_TYPE = "application/json"
SUCCESS_STATUSES = frozenset({200, 201, 409})

_rows: list[tuple[str, bytes]] = []
_counter = {"next": 0}
_samples: dict[str, list] = {"start_s": [], "latency_ms": [], "ok": []}
_statuses: Counter[str] = Counter()


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("jitgate benchmark")
    group.add_argument("--jg-bodies", type=str, default="", help="File of `<path>\\t<JSON body>` lines to send.")
    group.add_argument("--jg-key", type=str, default="", help="API key sent as `Authorization: Bearer <key>`.")
    group.add_argument("--jg-rps", type=float, default=0.0, help="Total request rate in requests/s; 0 sends as fast as the users can.")
    group.add_argument("--jg-offset", type=int, default=0, help="Row at which the first request starts.")
    group.add_argument("--jg-tag", type=str, default="bench", help="Part of every Idempotency-Key, unique per benchmark run.")
    group.add_argument("--jg-out", type=str, default="", help="JSON file for the latency of every request.")


@events.init.add_listener
def _load_rows(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None or not options.jg_bodies:
        raise SystemExit("--jg-bodies is required")
    for line in Path(options.jg_bodies).read_text().splitlines():
        path, _, body = line.partition("\t")
        _rows.append((path, body.encode()))
    if not _rows:
        raise SystemExit(f"{options.jg_bodies} contains no rows")
    _counter["next"] = options.jg_offset


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, start_time=None, **_kwargs) -> None:
    status = getattr(response, "status_code", 0) or 0
    ok = exception is None and status in SUCCESS_STATUSES
    _samples["start_s"].append(start_time if start_time is not None else time.time() - response_time / 1000)
    _samples["latency_ms"].append(response_time)
    _samples["ok"].append(ok)
    _statuses[str(status)] += 1


@events.quitting.add_listener
def _write_samples(environment, **_kwargs) -> None:
    out = environment.parsed_options.jg_out
    if out:
        Path(out).write_text(json.dumps({**_samples, "status": dict(_statuses)}))


class ApiUser(FastHttpUser):
    """Sends the next row, then waits so that all users together keep to `--jg-rps`."""

    # Keep-alive connections, as a real client pool would; no retries on failure.
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self._headers_base = {"Authorization": f"Bearer {options.jg_key}", "Content-Type": HEADER_CONTENT_TYPE}
        users = max(1, self.environment.runner.target_user_count or 1)
        self._interval_s = users / options.jg_rps if options.jg_rps > 0 else 0.0
        self._tag = options.jg_tag
        # Users start spread over one interval, so the first requests do not arrive as one burst.
        self._next_s = time.monotonic() + self._interval_s * (hash(id(self)) % 1000) / 1000

    @task
    def send(self) -> None:
        if self._interval_s:
            delay_s = self._next_s - time.monotonic()
            if delay_s > 0:
                gevent.sleep(delay_s)
            self._next_s = max(self._next_s + self._interval_s, time.monotonic() - self._interval_s)
        index = _counter["next"]
        _counter["next"] = index + 1
        path, body = _rows[index % len(_rows)]
        headers = self._headers_base
        if path == "/v1/requests":
            headers = {**headers, "Idempotency-Key": f"bench-{self._tag}-{index}"}
        # A line without a body is a GET, for measuring the cost of the HTTP path alone (GET /healthz).
        send = self.client.post if body else self.client.get
        with send(path, data=body or None, headers=headers, name=path, catch_response=True) as response:
            if response.status_code in SUCCESS_STATUSES:
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200] if response.text else ''}")
