"""Shared fixtures: real Redis servers from the embedded binary, in short temporary directories."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "amazon-access"


def wait_for(condition: Callable[[], object], *, timeout_s: float, interval_s: float = 0.02, message: str = "") -> object:
    """Poll `condition` until it returns a truthy value; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for: {message or condition}")
        time.sleep(interval_s)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, because Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="jg", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_server(short_tmp: Path):
    from cluster.redis_server import start_local_redis

    server = start_local_redis(short_tmp, "state")
    yield server
    server.stop()


@pytest.fixture
def target_redis(short_tmp: Path):
    from cluster.redis_server import start_local_redis

    server = start_local_redis(short_tmp, "target")
    yield server
    server.stop()
