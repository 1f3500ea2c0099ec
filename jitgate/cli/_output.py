"""Human and JSON output of the CLI: short lines and aligned tables on stdout."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jitgate.models import AccessRequest, Grant, RequestResult


def to_jsonable(value: Any) -> Any:
    """Convert models, dataclasses, enums, paths and datetimes into JSON-compatible values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: to_jsonable(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_jsonable(value)))


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(seconds: int | None) -> str:
    """Format seconds as `1h30m`, `15m` or `45s`."""
    if seconds is None:
        return "-"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in (header, *rows)]
    return "\n".join(lines)


def describe_request_result(result: RequestResult) -> str:
    request = result.request
    decision = request.decision
    lines = [
        f"request {request.id}: {request.state.value} "
        f"(decision {decision.effect.value}, risk {decision.risk_score:.1f}, "
        f"{request.principal} {request.role} on {request.resource} for {format_duration(request.duration_s)})"
    ]
    if request.state.value == "pending" and decision.required_approvals:
        lines.append(f"  waiting for {decision.required_approvals} approval(s) until {format_time(request.review_deadline)}")
    lines.extend(f"  reason: {reason}" for reason in decision.reasons)
    if result.grant is not None:
        lines.append(describe_grant(result.grant))
    return "\n".join(lines)


def describe_grant(grant: Grant) -> str:
    text = f"grant {grant.id}: {grant.state.value}, {grant.principal} {grant.role} on {grant.resource}"
    if grant.ended_at is not None:
        return f"{text}, ended {format_time(grant.ended_at)}" + (f" ({grant.end_reason})" if grant.end_reason else "")
    return f"{text}, expires {format_time(grant.expires_at)}"


def describe_request(request: AccessRequest) -> str:
    return (
        f"request {request.id}: {request.state.value}, {request.principal} {request.role} "
        f"on {request.resource} for {format_duration(request.duration_s)}"
    )


def requests_table(requests: Sequence[AccessRequest]) -> str:
    header = ("ID", "STATE", "DECISION", "PRINCIPAL", "RESOURCE", "ROLE", "DURATION", "CREATED")
    rows = [
        (
            request.id,
            request.state.value,
            request.decision.effect.value,
            request.principal,
            request.resource,
            request.role,
            format_duration(request.duration_s),
            format_time(request.created_at),
        )
        for request in requests
    ]
    return format_table(header, rows)


def grants_table(grants: Sequence[Grant]) -> str:
    header = ("ID", "STATE", "PRINCIPAL", "RESOURCE", "ROLE", "GRANTED", "EXPIRES")
    rows = [
        (
            grant.id,
            grant.state.value,
            grant.principal,
            grant.resource,
            grant.role,
            format_time(grant.granted_at),
            format_time(grant.expires_at),
        )
        for grant in grants
    ]
    return format_table(header, rows)


def describe_object(value: Any) -> str:
    """Format a result of unknown shape as `key: value` lines (its `format()` when it has one)."""
    formatter = getattr(value, "format", None)
    if callable(formatter):
        try:
            text = formatter()
        except TypeError:
            text = None
        if isinstance(text, str):
            return text
    data = to_jsonable(value)
    if not isinstance(data, dict):
        return str(data)
    return "\n".join(f"{key}: {item}" for key, item in data.items())
