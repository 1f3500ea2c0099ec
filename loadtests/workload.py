"""The benchmark workload: rows of the access log as request, check and decision bodies.

Rows map to access requests exactly as `jitgate replay` maps them (`jitgate.replay.plan_request`),
so the benchmark sends what a replay sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jitgate.replay import DEFAULT_LOG_PATH, DEFAULT_SEED, PlannedRequest, plan_request, read_log

REQUESTS_PATH = "/v1/requests"
CHECK_PATH = "/v1/check"


def load_plans(path: Path = DEFAULT_LOG_PATH, limit: int | None = None, seed: int = DEFAULT_SEED) -> list[PlannedRequest]:
    return [plan_request(row, seed) for row in read_log(path, limit)]


def request_body(plan: PlannedRequest) -> dict[str, Any]:
    """Return the `POST /v1/requests` body of a planned request: the decision input plus the reason."""
    return {**decision_input(plan), "reason": plan.reason}


def decision_input(plan: PlannedRequest) -> dict[str, Any]:
    """Return one element of the `POST /v1/decisions:batch` body."""
    return {
        "principal": plan.principal,
        "principal_attributes": plan.principal_attributes,
        "resource": plan.resource,
        "role": plan.role,
        "duration_s": plan.duration_s,
        "context": plan.context.model_dump(mode="json", exclude_none=True),
    }


def check_body(plan: PlannedRequest) -> dict[str, Any]:
    return {"principal": plan.principal, "resource": plan.resource, "role": plan.role}


def write_bodies(path: Path, api_path: str, bodies: Iterable[dict[str, Any]]) -> int:
    """Write `<api path>\\t<JSON body>` lines for the Locust file; returns the number of lines."""
    lines = [f"{api_path}\t{json.dumps(body, separators=(',', ':'))}" for body in bodies]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def check_columns(plans: Sequence[PlannedRequest], count: int) -> dict[str, list[str]]:
    """Return a columnar `check:batch` body of `count` checks, cycling through the plans."""
    chosen = [plans[i % len(plans)] for i in range(count)]
    return {
        "principals": [p.principal for p in chosen],
        "resources": [p.resource for p in chosen],
        "roles": [p.role for p in chosen],
    }
