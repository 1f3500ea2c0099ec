"""Duration rules.

A requested duration must be a positive whole number of seconds no larger than the global
maximum (else `InvalidInput`, HTTP 400). Caps from policies, the global setting and a reviewer's
narrowing combine by one rule: the smallest applies. A request over the policy maximum is denied
by the policy layer with the maximum named, never clamped.
"""

from __future__ import annotations

from jitgate.errors import InvalidInput


def validate_requested_duration(duration_s: object, global_max_duration_s: int, *, field: str = "duration_s") -> int:
    if isinstance(duration_s, bool) or not isinstance(duration_s, int):
        raise InvalidInput(
            f"{field} must be a whole number of seconds, got {duration_s!r}", field=field, value=duration_s
        )
    if duration_s <= 0:
        raise InvalidInput(f"{field} must be greater than 0, got {duration_s}", field=field, value=duration_s, limit=1)
    if duration_s > global_max_duration_s:
        raise InvalidInput(
            f"{field} {duration_s} exceeds the global maximum of {global_max_duration_s} s",
            field=field,
            value=duration_s,
            limit=global_max_duration_s,
        )
    return duration_s


def effective_cap_s(*caps_s: int | None) -> int:
    """Combine several maximum durations: the smallest applies; `None` means no cap from that source."""
    present = [cap for cap in caps_s if cap is not None]
    if not present:
        raise ValueError("at least one cap is required")
    return min(present)
