"""Figures of one failover scenario, computed from the Locust response records and the read-backs.

Pure logic: no Ray, no Redis, no HTTP. `loadtests.failover` collects the inputs and prints the
returned dict as one JSON line. All instants are epoch milliseconds of the same host clock
(the load generator, the cluster and the ACL watcher run on one machine).

Definitions:
- acknowledged: a `POST /v1/requests` that returned 200 or 201 with a request id;
- lost: an acknowledged request that a later `GET /v1/requests/{id}` does not return, or
  returns with another state or grant id, or whose acknowledged grant `GET /v1/grants/{id}`
  does not return;
- unavailable_503: any 503 that carries `Retry-After`; errors_5xx: every other 5xx;
  transport_errors: no HTTP response (connection reset, timeout);
- recovery_s: from the kill to the first 2xx response of a request that was sent after the kill
  and routed to the affected shard, so requests that were already past the killed part do not
  count as recovery;
- check_true_after_expiry: `POST /v1/check` answers `allowed: true` received after the grant's
  `expires_at`;
- revoke lateness: from a redis-acl grant's deadline to the first ACL watcher poll that no
  longer lists the grant's ACL user (an upper bound, with the poll period as error).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
ACKNOWLEDGED_STATUSES = (200, 201)


@dataclass(frozen=True)
class AclObservation:
    """When the ACL watcher first and last listed a user, and the first poll that missed it after that."""

    first_seen_ms: float
    last_seen_ms: float
    gone_ms: float | None


@dataclass(frozen=True)
class Outage:
    """A window in which a part was down: from the kill to the moment it served again."""

    down_ms: float
    back_ms: float

    @property
    def duration_s(self) -> float:
        return (self.back_ms - self.down_ms) / 1000


def percentile_nearest_rank(values: list[float], percentile: float) -> float | None:
    """Return the smallest value with at least `percentile`% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(len(ordered) * percentile / 100)
    return ordered[max(1, rank) - 1]


def is_acknowledged(record: Record) -> bool:
    return record["kind"] == "submit" and record["status"] in ACKNOWLEDGED_STATUSES and bool(record.get("request_id"))


def is_unavailable(record: Record) -> bool:
    return record["status"] == 503 and bool(record.get("retry_after"))


def is_other_5xx(record: Record) -> bool:
    return record["status"] >= 500 and not is_unavailable(record)


def is_failure(record: Record) -> bool:
    return record["status"] == 0 or record["status"] >= 500


def response_counts(records: Iterable[Record]) -> dict[str, int]:
    records = list(records)
    submits = [r for r in records if r["kind"] == "submit"]
    return {
        "sent": len(submits),
        "acknowledged": sum(1 for r in submits if is_acknowledged(r)),
        "conflicts_409": sum(1 for r in submits if r["status"] == 409),
        "unavailable_503": sum(1 for r in records if is_unavailable(r)),
        "errors_5xx": sum(1 for r in records if is_other_5xx(r)),
        "transport_errors": sum(1 for r in records if r["status"] == 0),
        "other_4xx": sum(1 for r in records if 400 <= r["status"] < 500 and r["status"] != 409),
    }


def lost_acknowledgements(
    records: Iterable[Record], stored_requests: Mapping[str, Record | None], stored_grants: Mapping[str, Record | None]
) -> list[dict[str, Any]]:
    """Return one entry per acknowledged request that is missing or differs from its acknowledgement.

    `stored_requests` and `stored_grants` map ids to the records read back, None for 404. Ids
    whose read-back failed for another reason are left out of both maps and are not judged.
    """
    lost = []
    for record in records:
        if not is_acknowledged(record):
            continue
        request_id = record["request_id"]
        if request_id not in stored_requests:
            continue
        stored = stored_requests[request_id]
        problem = None
        if stored is None:
            problem = "request not found"
        elif stored.get("state") != record.get("state"):
            problem = f"state {stored.get('state')} instead of {record.get('state')}"
        elif stored.get("grant_id") != record.get("grant_id"):
            problem = f"grant {stored.get('grant_id')} instead of {record.get('grant_id')}"
        elif record.get("grant_id") and record["grant_id"] in stored_grants and stored_grants[record["grant_id"]] is None:
            problem = "grant not found"
        if problem is not None:
            lost.append({"request_id": request_id, "problem": problem})
    return lost


def recovery_s(records: Iterable[Record], kill_ms: float, affected: Callable[[Record], bool]) -> float | None:
    """Return the seconds from the kill to the first 2xx response of an affected request sent after the kill."""
    answers = [
        r["received_ms"]
        for r in records
        if r["kind"] == "submit" and r["sent_ms"] >= kill_ms and r["status"] in ACKNOWLEDGED_STATUSES and affected(r)
    ]
    return round((min(answers) - kill_ms) / 1000, 3) if answers else None


def check_figures(records: Iterable[Record]) -> dict[str, Any]:
    checks = [r for r in records if r["kind"] == "check" and r["status"] == 200]
    after = [r for r in checks if r["received_ms"] > r["expires_ms"]]
    return {
        "checks": len(checks),
        "checks_after_expiry": len(after),
        "check_true_after_expiry": sum(1 for r in after if r.get("allowed")),
        "check_true_sent_after_expiry": sum(1 for r in after if r.get("allowed") and r["sent_ms"] >= r["expires_ms"]),
        "check_true_before_expiry": sum(1 for r in checks if r.get("allowed") and r["received_ms"] <= r["expires_ms"]),
        "check_send_delay_p99_ms": _round(percentile_nearest_rank([r["sent_ms"] - r["due_ms"] for r in checks], 99)),
    }


def in_flight_figures(records: Iterable[Record], kill_ms: float, gone_ms: float | None = None) -> dict[str, int]:
    """Count failures, split by whether the request was in flight at the kill or sent after it.

    A SIGKILLed process keeps its sockets until the kernel has torn it down, so a request sent
    between the signal (`kill_ms`) and the moment the process was gone (`gone_ms`) still reached
    it and counts as in flight.
    """
    records = list(records)
    gone_ms = kill_ms if gone_ms is None else max(gone_ms, kill_ms)
    in_flight = [r for r in records if r["sent_ms"] <= gone_ms and r["received_ms"] > kill_ms]
    return {
        "in_flight_at_kill": len(in_flight),
        "failed_in_flight": sum(1 for r in in_flight if is_failure(r)),
        "failed_after_kill": sum(1 for r in records if r["sent_ms"] > gone_ms and is_failure(r)),
    }


def revoke_figures(
    grants: Iterable[tuple[str, float]], acl: Mapping[str, AclObservation], *, outage: Outage | None = None
) -> dict[str, Any]:
    """Lateness of access removal for (ACL user name, expires_ms) pairs of redis-acl grants.

    With an `outage`, grants whose deadline fell before the part was back are also measured
    from the moment it was back, as `revoke_after_recovery_max_ms`.
    """
    lateness_ms: list[float] = []
    after_recovery_ms: list[float] = []
    never_seen = not_removed = 0
    for username, expires_ms in grants:
        observation = acl.get(username)
        if observation is None:
            never_seen += 1
            continue
        if observation.gone_ms is None:
            not_removed += 1
            continue
        lateness_ms.append(observation.gone_ms - expires_ms)
        if outage is not None and expires_ms < outage.back_ms:
            after_recovery_ms.append(observation.gone_ms - outage.back_ms)
    p99 = percentile_nearest_rank(lateness_ms, 99)
    figures: dict[str, Any] = {
        "revoke_samples": len(lateness_ms),
        "revoke_late_p50_ms": _round(percentile_nearest_rank(lateness_ms, 50)),
        "revoke_late_p99_ms": _round(p99),
        "revoke_late_max_ms": _round(max(lateness_ms) if lateness_ms else None),
        "acl_user_never_seen": never_seen,
        "acl_user_not_removed": not_removed,
    }
    if outage is not None:
        figures["outage_s"] = round(outage.duration_s, 3)
        figures["revoke_deadlines_in_outage"] = len(after_recovery_ms)
        figures["revoke_after_recovery_max_ms"] = _round(max(after_recovery_ms) if after_recovery_ms else None)
    return figures


def terminal_figures(grant_deadlines: Mapping[str, float], terminal_events: Counter[str], *, settled_ms: float) -> dict[str, int]:
    """Count grants with other than one `expired`/`revoked` audit event.

    `grant_deadlines` maps the scenario's acknowledged grants to their deadline. Grants whose
    deadline is after `settled_ms` may still be ending, so they count only when they have several.
    """
    missing = sum(1 for grant_id, expires_ms in grant_deadlines.items() if expires_ms <= settled_ms and terminal_events[grant_id] == 0)
    duplicated = sum(1 for grant_id in grant_deadlines if terminal_events[grant_id] > 1)
    return {"grants_expired_checked": sum(1 for e in grant_deadlines.values() if e <= settled_ms),
            "terminal_missing": missing, "terminal_duplicated": duplicated}


def throughput_series(records: Iterable[Record], kill_ms: float, *, bin_s: float = 1.0) -> dict[str, dict[int, int]]:
    """Count responses per time bin relative to the kill: access requests split into ok (2xx-4xx),
    503 and failed, and checks, whose rate follows the grant deadlines instead of the load."""
    series: dict[str, Counter[int]] = {"ok": Counter(), "unavailable": Counter(), "failed": Counter(), "checks": Counter()}
    for record in records:
        offset = math.floor((record["received_ms"] - kill_ms) / 1000 / bin_s)
        if record["kind"] == "check":
            series["checks"][offset] += 1
        elif is_unavailable(record):
            series["unavailable"][offset] += 1
        elif is_failure(record):
            series["failed"][offset] += 1
        else:
            series["ok"][offset] += 1
    return {name: dict(counts) for name, counts in series.items()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
