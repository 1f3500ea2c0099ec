"""Turn stored ledger records into the API's response shapes (`jitgate.models`)."""

from __future__ import annotations

from typing import Any

from actors.domain.clock import to_iso


def request_view(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "state": record["state"],
        "submitter": record["submitter"],
        "principal": record["principal"],
        "resource": record["resource"],
        "role": record["role"],
        "duration_s": record["duration_s"],
        "reason": record["reason"],
        "context": record["context"],
        "decision": record["decision"],
        "reviews": [
            {
                "reviewer": r["reviewer"],
                "decision": r["decision"],
                "reason": r["reason"],
                "duration_s": r.get("duration_s"),
                "at": to_iso(r["at_ms"]),
                "key_id": r["key_id"],
            }
            for r in record.get("reviews", ())
        ],
        "grant_id": record.get("grant_id"),
        "created_at": to_iso(record["created_ms"]),
        "updated_at": to_iso(record["updated_ms"]),
        "review_deadline": to_iso(record.get("review_deadline_ms")),
        "version": record["version"],
    }


def grant_view(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "request_id": record["request_id"],
        "principal": record["principal"],
        "resource": record["resource"],
        "role": record["role"],
        "state": record["state"],
        "granted_at": to_iso(record["granted_ms"]),
        "expires_at": to_iso(record["expires_ms"]),
        "ended_at": to_iso(record.get("ended_ms")),
        "end_reason": record.get("end_reason"),
        "provisioner": record["provisioner"],
        "version": record["version"],
    }


def result_view(request: dict[str, Any], grant: dict[str, Any] | None) -> dict[str, Any]:
    return {"request": request_view(request), "grant": grant_view(grant) if grant else None}
