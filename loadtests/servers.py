"""Start and stop the two servers under test, and list their processes for the CPU meter.

The cluster is `cluster.bootstrap.up` with a state dir of its own; the baseline is
`loadtests.baseline_app` in a child process. Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

from cluster import processes
from cluster.bootstrap import _state_paths
from cluster.redis_server import attach_local_redis
from cluster.settings import Settings

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def replay_key(state_dir: Path) -> str:
    """Return the raw API key of the `replay` profile, which has the `submit_for_others` scope."""
    credentials = yaml.safe_load((state_dir / "credentials.yaml").read_text())
    return credentials["profiles"]["replay"]["key"]


def wait_ready(api_url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"GET {api_url}/readyz did not return 200 within {timeout_s:.0f} s")


def _redis_processes(state_dir: Path) -> list[psutil.Process]:
    found = []
    for name in ("redis", "target"):
        server = attach_local_redis(state_dir, name)
        if server is not None:
            try:
                found.append(psutil.Process(server.pid))
            except psutil.Error:
                continue
    return found


@dataclass
class BaselineServer:
    """`loadtests.baseline_app` running in a child process of its own session."""

    state_dir: Path
    port: int
    process: subprocess.Popen

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, state_dir: Path, log_path: Path) -> BaselineServer:
        port = free_port()
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "loadtests.baseline_app", "--state-dir", str(state_dir), "--port", str(port)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
            )
        server = cls(state_dir, port, process)
        try:
            wait_ready(server.api_url)
        except RuntimeError:
            server.stop()
            raise
        return server

    def processes(self) -> list[psutil.Process]:
        try:
            own = [psutil.Process(self.process.pid)]
        except psutil.Error:
            own = []
        return own + _redis_processes(self.state_dir)

    def stop(self) -> None:
        # SIGTERM lets uvicorn finish, and the app then stops its Redis servers.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for server in _redis_processes(self.state_dir):
            server.terminate()


def cluster_processes(settings: Settings) -> Callable[[], list[psutil.Process]]:
    """Return a function listing the cluster's processes: the Ray session, its workers and the Redis servers."""
    paths = _state_paths(settings)

    def listing() -> list[psutil.Process]:
        record = processes.read_pid_file(paths.ray_pid_file)
        found = {p.pid: p for p in processes.session_members(record)} if record is not None else {}
        for process in [*processes.processes_using_path(paths.ray_temp), *_redis_processes(paths.root)]:
            found.setdefault(process.pid, process)
        return [process for pid, process in found.items() if pid != os.getpid()]

    return listing


DIRECT_INGRESS_PORTS = range(30000, 31001)


def direct_ingress_urls(settings: Settings) -> list[str]:
    """Return the URLs of the ingress replicas' own HTTP servers (Ray Serve direct ingress, ports 30000-31000)."""
    urls = []
    for process in cluster_processes(settings)():
        try:
            if "ServeReplica" not in process.name() and "ServeReplica" not in " ".join(process.cmdline()):
                continue
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN and connection.laddr.port in DIRECT_INGRESS_PORTS:
                    urls.append(f"http://{connection.laddr.ip}:{connection.laddr.port}")
        except psutil.Error:
            continue
    if not urls:
        raise RuntimeError("no ingress replica listens on a direct-ingress port (30000-31000)")
    return sorted(urls)
