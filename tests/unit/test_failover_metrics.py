"""Classification of requests around a replica kill in the failover benchmark."""

from loadtests.failover_metrics import in_flight_figures

KILL_MS = 1_000.0
GONE_MS = 1_040.0


def record(sent_ms: float, received_ms: float, status: int) -> dict:
    return {"sent_ms": sent_ms, "received_ms": received_ms, "status": status}


def test_sent_before_gone_in_flight():
    figures = in_flight_figures([record(1_020.0, 1_050.0, 0)], KILL_MS, GONE_MS)
    assert figures["in_flight_at_kill"] == 1
    assert figures["failed_in_flight"] == 1
    assert figures["failed_after_kill"] == 0


def test_sent_after_gone_counts_later():
    figures = in_flight_figures([record(1_041.0, 1_060.0, 0)], KILL_MS, GONE_MS)
    assert figures["in_flight_at_kill"] == 0
    assert figures["failed_after_kill"] == 1


def test_answered_before_kill_not_in_flight():
    figures = in_flight_figures([record(990.0, 999.0, 201)], KILL_MS, GONE_MS)
    assert figures["in_flight_at_kill"] == 0
    assert figures["failed_in_flight"] == 0


def test_window_without_gone_time():
    figures = in_flight_figures([record(1_020.0, 1_050.0, 502)], KILL_MS)
    assert figures["in_flight_at_kill"] == 0
    assert figures["failed_after_kill"] == 1
