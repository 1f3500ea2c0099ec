"""Time-ordered identifiers: a prefix, 12 hex digits of epoch milliseconds and 10 random hex digits."""

from __future__ import annotations

import secrets


def new_id(prefix: str, now_ms: int) -> str:
    return f"{prefix}_{now_ms:012x}{secrets.token_hex(5)}"


def new_request_id(now_ms: int) -> str:
    return new_id("req", now_ms)


def new_grant_id(now_ms: int) -> str:
    return new_id("grt", now_ms)
