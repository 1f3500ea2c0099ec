"""Injected clocks: all domain code reads the time from a clock object, so tests move a fake one."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when `advance` is called."""

    def __init__(self, start_ms: int = 1_780_000_000_000) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, seconds: float) -> None:
        self._now_ms += int(seconds * 1000)


def to_datetime(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def to_iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return to_datetime(epoch_ms).isoformat().replace("+00:00", "Z")


def hour_utc(epoch_ms: int) -> int:
    return (epoch_ms // 3_600_000) % 24
