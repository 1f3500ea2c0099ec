"""Hash chain of audit events: each event's hash covers the previous hash and the event itself,
so changing, removing or reordering any stored event breaks `verify_chain`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

GENESIS_HASH = "0" * 64


def canonical_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, event_json: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{event_json}".encode()).hexdigest()


def verify_chain(events: Iterable[tuple[str, str, str]], start_hash: str = GENESIS_HASH) -> int | None:
    """Check (event_json, prev_hash, hash) triples in stream order.

    Returns None when the chain holds, else the index of the first event that breaks it.
    """
    expected_prev = start_hash
    for index, (event_json, prev_hash, hash_hex) in enumerate(events):
        if prev_hash != expected_prev or chain_hash(prev_hash, event_json) != hash_hex:
            return index
        expected_prev = hash_hex
    return None
