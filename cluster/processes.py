"""Pid files, detached child processes and their shutdown, for the servers `jitgate up` starts.

Every server runs in its own session (`start_new_session=True`), so it outlives the CLI and
Ctrl-C in the terminal does not reach it. A pid file stores the pid, the process group and the
process start time, so a later `jitgate down` never signals an unrelated process that reuses
the pid.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

# psutil rounds create_time; two reads of the same process can differ by a few milliseconds.
_CREATE_TIME_TOLERANCE_S = 0.05
_POLL_INTERVAL_S = 0.1


class StartupError(RuntimeError):
    """A server did not start or did not become ready in time; the message names its log file."""


@dataclass(frozen=True)
class ProcessRecord:
    """Identity of a started process: pid, process group and start time (epoch seconds)."""

    pid: int
    pgid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        process = psutil.Process(pid)
        return cls(pid=pid, pgid=os.getpgid(pid), create_time=process.create_time())


def write_pid_file(path: Path, record: ProcessRecord) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(asdict(record)) + "\n")
    tmp_path.replace(path)


def read_pid_file(path: Path) -> ProcessRecord | None:
    """Read a pid file, or return None when it is missing or invalid (logged)."""
    try:
        data = json.loads(path.read_text())
        return ProcessRecord(pid=int(data["pid"]), pgid=int(data["pgid"]), create_time=float(data["create_time"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Ignoring invalid pid file %s: %s", path, exc)
        return None


def remove_pid_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def spawn_detached(
    argv: list[str], *, log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start `argv` in a new session with stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )


def _reap(pid: int) -> None:
    # A child of this Python process stays a zombie until it is waited for, and zombies count as exited.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _is_alive(process: psutil.Process) -> bool:
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            _reap(process.pid)
            return False
        return True
    except psutil.NoSuchProcess:
        return False


def find_process(record: ProcessRecord) -> psutil.Process | None:
    """Return the running process of `record`, or None when it exited or the pid was reused."""
    try:
        process = psutil.Process(record.pid)
        if abs(process.create_time() - record.create_time) > _CREATE_TIME_TOLERANCE_S:
            return None
    except psutil.NoSuchProcess:
        return None
    return process if _is_alive(process) else None


def is_running(record: ProcessRecord) -> bool:
    return find_process(record) is not None


def wait_for_exit(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until all `processes` exited, and return the ones still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in processes if _is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL_S)
        alive = [p for p in alive if _is_alive(p)]
    return alive


def _send(process: psutil.Process, sig: signal.Signals) -> None:
    try:
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def terminate_processes(processes: list[psutil.Process], timeout_s: float) -> list[int]:
    """Send SIGTERM, wait up to `timeout_s`, then SIGKILL the survivors, and return their pids."""
    for process in processes:
        _send(process, signal.SIGTERM)
    survivors = wait_for_exit(processes, timeout_s)
    for process in survivors:
        logger.warning("Process %d ignored SIGTERM for %.0f s, sending SIGKILL", process.pid, timeout_s)
        _send(process, signal.SIGKILL)
    still_alive = wait_for_exit(survivors, 5.0)
    for process in still_alive:
        logger.error("Process %d survived SIGKILL", process.pid)
    return [p.pid for p in survivors]


def terminate_process(record: ProcessRecord, timeout_s: float) -> bool:
    """Stop the process of `record` with SIGTERM, then SIGKILL, and return False if it was not running."""
    process = find_process(record)
    if process is None:
        return False
    terminate_processes([process], timeout_s)
    return True


def session_members(record: ProcessRecord) -> list[psutil.Process]:
    """List the live processes in the session that `record` leads, started no earlier than it.

    Ray's raylet puts each worker in a process group of its own, but the workers stay in the
    session of `ray start`, so the session id finds them all.
    """
    members = []
    for process in psutil.process_iter(["pid", "create_time"]):
        if process.pid == os.getpid():
            continue
        try:
            if os.getsid(process.pid) != record.pid:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        if process.info["create_time"] + _CREATE_TIME_TOLERANCE_S < record.create_time:
            continue
        if _is_alive(process):
            members.append(process)
    return members


def terminate_process_group(record: ProcessRecord, timeout_s: float) -> list[int]:
    """Send SIGTERM to the process group of `record`, then SIGKILL to survivors after `timeout_s`.

    Returns the pids that needed SIGKILL. The group is signalled only while its leader is the
    recorded process, because a pid that was reused could lead an unrelated group.
    """
    if find_process(record) is None:
        return []
    members = [p for p in session_members(record) if _process_group(p) == record.pgid]
    try:
        os.killpg(record.pgid, signal.SIGTERM)
    except ProcessLookupError:
        return []
    survivors = wait_for_exit(members, timeout_s)
    if not survivors:
        return []
    logger.warning(
        "%d processes of group %d ignored SIGTERM for %.0f s, sending SIGKILL", len(survivors), record.pgid, timeout_s
    )
    try:
        os.killpg(record.pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_for_exit(survivors, 5.0)
    return [p.pid for p in survivors]


def _process_group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def _is_ray_or_own_python(process: psutil.Process) -> bool:
    """Tell Ray's processes (venv Python, Ray binaries, `ray::` workers) from, say, a `tail -f`."""
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if not cmdline:
        return False
    program = cmdline[0]
    if program.startswith("ray::"):
        return True
    real_program = os.path.realpath(program)
    return real_program == os.path.realpath(sys.executable) or real_program.startswith(_ray_package_dir() + os.sep)


def _ray_package_dir() -> str:
    # find_spec locates the package without importing Ray, which takes seconds.
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return "/nonexistent"
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def processes_using_path(path: Path) -> list[psutil.Process]:
    """List live Ray or Python processes (not this one) whose command line contains `path`.

    A match is the path itself or a path below it, after whitespace or `=`, so `/x/ray`
    does not match `/x/ray2`.
    """
    pattern = re.compile(r"(?:^|[\s=])" + re.escape(str(path)) + r"(?:/|\s|$)")
    matches = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid == os.getpid():
            continue
        cmdline = process.info["cmdline"] or []
        if not any(pattern.search(arg) for arg in cmdline):
            continue
        if _is_ray_or_own_python(process) and _is_alive(process):
            matches.append(process)
    return matches
