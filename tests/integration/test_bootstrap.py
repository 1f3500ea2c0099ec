"""`jitgate up` / `down` / `status` against a real Ray head and real Redis servers."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from cluster import processes
from cluster.bootstrap import PartState, StartupError, down, status, up
from cluster.redis_server import start_local_redis
from cluster.settings import Settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pids_with_path_in_cmdline(path: Path) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(path) in cmdline and _is_alive(process.pid):
            found.append(process.pid)
    return found


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Ray's Unix socket paths must stay under 107 bytes, so the directory is short.
    path = Path(tempfile.mkdtemp(prefix="jg", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(short_dir: Path) -> Iterator[Settings]:
    settings = Settings(state_dir=short_dir, dashboard=False, http_port=_free_port(), ingress_replicas=1)
    yield settings
    down(settings, out=lambda line: None)


def test_up_status_down_keeps_data(settings: Settings) -> None:
    lines: list[str] = []
    result = up(settings, out=lines.append)

    assert not result.already_up
    assert set(result.started) == {"redis", "target_redis", "ray_head", "serve_app"}
    assert result.redis_url == f"unix://{settings.state_dir}/redis.sock"
    assert result.target_redis_url == f"unix://{settings.state_dir}/target.sock"
    assert httpx.get(f"{result.api_url}/readyz", timeout=10).status_code == 200
    assert any(result.api_url in line for line in lines)

    cluster_file = json.loads((settings.state_dir / "cluster.json").read_text())
    assert cluster_file["ray_address"] == result.ray_address
    assert cluster_file["api_url"] == result.api_url
    assert cluster_file["started"] == {"ray_head": True, "redis": True, "target_redis": True, "serve_app": True}

    report = status(settings)
    for part in report.parts:
        assert part.state == PartState.RUNNING, part
    assert report.is_up
    ray_record = processes.read_pid_file(settings.state_dir / "pids" / "ray.pid")
    assert ray_record is not None
    assert report.ray_head.pid == ray_record.pid

    second = up(settings, out=lambda line: None)
    assert second.already_up
    assert second.started == ()

    client = redis.Redis.from_url(result.redis_url)
    client.set("bootstrap-test", "kept")
    client.close()

    # Workers live in process groups of their own but in the session of `ray start`.
    recorded_pids = {p.pid for p in processes.session_members(ray_record)}
    recorded_pids |= {report.redis.pid, report.target_redis.pid}
    assert len(recorded_pids) > 3

    down(settings, out=lambda line: None)

    assert [pid for pid in recorded_pids if _is_alive(pid)] == []
    assert _pids_with_path_in_cmdline(settings.state_dir / "ray") == []
    assert list((settings.state_dir / "pids").glob("*.pid")) == []
    stopped = status(settings)
    for part in stopped.parts:
        assert part.state == PartState.STOPPED, part

    restarted = up(settings, out=lambda line: None)
    assert not restarted.already_up
    client = redis.Redis.from_url(restarted.redis_url)
    assert client.get("bootstrap-test") == b"kept"
    client.close()


def test_down_when_down_reports_it(settings: Settings) -> None:
    lines: list[str] = []
    down(settings, out=lines.append)
    assert lines == ["jitgate is already down."]


def test_up_rejects_long_state_dir(short_dir: Path) -> None:
    long_dir = short_dir / ("x" * 40)
    settings = Settings(state_dir=long_dir, dashboard=False, http_port=_free_port())

    with pytest.raises(StartupError, match="JITGATE_STATE_DIR"):
        up(settings, out=lambda line: None)

    assert not long_dir.exists()


def test_local_redis_restart_keeps_data(short_dir: Path) -> None:
    server = start_local_redis(short_dir, "restart", "always")
    try:
        client = redis.Redis.from_url(server.url)
        client.set("key", "before-restart")
        client.close()
        first_pid = server.pid

        server.restart()
        assert server.pid != first_pid
        assert not _is_alive(first_pid)
        client = redis.Redis.from_url(server.url)
        assert client.get("key") == b"before-restart"
        client.set("key", "before-kill")
        client.close()

        server.kill()
        assert not server.is_running()
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.get("key") == b"before-kill"
        client.close()

        with pytest.raises(StartupError, match="already runs"):
            start_local_redis(short_dir, "restart", "always")
    finally:
        server.stop()

    assert not server.is_running()
    assert not (short_dir / "pids" / "restart.pid").exists()
    assert (short_dir / "restart" / "appendonly.aof").exists()
