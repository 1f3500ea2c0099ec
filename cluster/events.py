"""Event sources: verify a signed webhook and map its JSON body to an access request.

The signature is HMAC-SHA256 over `<timestamp>.<raw body>`, so a captured body cannot be
replayed with a new timestamp; the timestamp must be within the source's `max_age_s`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from jitgate.errors import InvalidInput, NotFound, Unauthenticated

SIGNATURE_PREFIX = "sha256="
REQUIRED_FIELDS = ("principal", "resource", "role", "duration_s", "reason")
OPTIONAL_FIELDS = ("ticket", "delivery_id")


@dataclass(frozen=True)
class EventSource:
    name: str
    secret: bytes
    max_age_s: int
    fields: dict[str, dict[str, Any]]


def load_sources(config: dict[str, Any], secrets: dict[str, Any]) -> dict[str, EventSource]:
    sources = {}
    for name, entry in (config or {}).get("sources", {}).items():
        secret = (secrets or {}).get(name)
        if not secret:
            continue  # A source without a secret cannot be verified, so it stays disabled.
        missing = [f for f in REQUIRED_FIELDS if f not in entry.get("fields", {})]
        if missing:
            raise ValueError(f"event source {name!r} maps no {', '.join(missing)}; add them under 'fields'")
        sources[name] = EventSource(name=name, secret=str(secret).encode(), max_age_s=int(entry.get("max_age_s", 300)),
                                    fields=dict(entry["fields"]))
    return sources


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(source: EventSource | None, name: str, *, timestamp: str | None, signature: str | None, body: bytes, now_s: float) -> EventSource:
    if source is None:
        raise NotFound(f"event source {name!r} is not configured or has no secret", source=name)
    if not timestamp or not signature:
        raise Unauthenticated("missing X-Jitgate-Timestamp or X-Jitgate-Signature header")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise Unauthenticated(f"X-Jitgate-Timestamp must be Unix seconds (at most 12 ASCII digits), got {timestamp[:40]!r}")
    age_s = abs(now_s - int(timestamp))
    if age_s > source.max_age_s:
        raise Unauthenticated(f"event timestamp is {age_s:.0f} s from now; the limit is {source.max_age_s} s")
    if not hmac.compare_digest(sign(source.secret, timestamp, body), signature):
        raise Unauthenticated(f"invalid signature for event source {name!r}")
    return source


def _lookup(body: Any, path: str) -> Any:
    value = body
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def map_event(source: EventSource, body: Any) -> dict[str, Any]:
    """Return the request fields of an event; raises InvalidInput naming the missing path."""
    if not isinstance(body, dict):
        raise InvalidInput(f"event body must be a JSON object, got {type(body).__name__}", field="body")
    mapped: dict[str, Any] = {}
    for field in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
        rule = source.fields.get(field)
        if rule is None:
            continue
        value = rule["value"] if "value" in rule else _lookup(body, rule["path"])
        if value is None:
            if field in REQUIRED_FIELDS:
                raise InvalidInput(f"event field {rule.get('path')!r} (for {field}) is missing", field=rule.get("path", field))
            continue
        mapped[field] = value
    return mapped
