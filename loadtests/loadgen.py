"""Run Locust in a process of its own, pinned to one core, and search for the highest rate within a p99 limit.

The server's CPU use is sampled from /proc (through psutil) while Locust runs, so every
figure comes with the cores the server used for it. Locust's own CPU time comes from
`os.wait4`, so its share of the shared machine is known too.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
WARMUP_S = 2.0
MAX_ERROR_SHARE = 0.001
MIN_ACHIEVED_SHARE = 0.95


# ---------------------------------------------------------------- server CPU


class CpuMeter:
    """Sample the summed CPU time of a changing set of processes every `interval_s` in a thread."""

    def __init__(self, processes: Callable[[], Iterable[psutil.Process]], interval_s: float = 0.5, relist_s: float = 5.0) -> None:
        self._processes = processes
        self._interval_s = interval_s
        # Listing a Ray cluster's processes walks /proc (about 7 ms of CPU), so it runs only
        # every `relist_s`; reading the CPU times of the listed processes is cheap.
        self._relist_s = relist_s
        self._listed: list[psutil.Process] = []
        self._listed_at = -math.inf
        self._known: dict[tuple[int, float], float] = {}
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def __enter__(self) -> CpuMeter:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        if time.monotonic() - self._listed_at >= self._relist_s:
            self._listed = list(self._processes())
            self._listed_at = time.monotonic()
        for process in self._listed:
            try:
                times = process.cpu_times()
                # Keyed by pid and start time, so a pid reused by a new process starts from zero.
                self._known[(process.pid, process.create_time())] = times.user + times.system
            except psutil.Error:
                continue
        # Processes that ended keep their last reading, so the sum never goes backwards.
        self._samples.append((time.time(), sum(self._known.values())))

    def cores(self, start_s: float, end_s: float) -> float | None:
        """Return the average number of cores busy between two epoch times, from the nearest samples."""
        inside = [(t, cpu) for t, cpu in self._samples if start_s - self._interval_s <= t <= end_s + self._interval_s]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


# ---------------------------------------------------------------- one Locust run


@dataclass
class LoadStep:
    """One Locust run at a target rate, measured after the warm-up."""

    target_rps: float
    users: int
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    statuses: dict[str, int]
    server_cores: float | None
    locust_cores: float
    rows_sent: int

    def meets(self, max_p99_ms: float) -> bool:
        """Tell whether the step kept p99 within the limit, with almost no errors, at nearly the target rate."""
        if self.requests == 0 or self.errors > MAX_ERROR_SHARE * self.requests:
            return False
        if self.target_rps > 0 and self.achieved_rps < MIN_ACHIEVED_SHARE * self.target_rps:
            return False
        return self.p99_ms <= max_p99_ms

    def as_dict(self) -> dict:
        return {
            "target_rps": round(self.target_rps, 1), "users": self.users, "achieved_rps": round(self.achieved_rps, 1),
            "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2), "requests": self.requests,
            "errors": self.errors, "statuses": self.statuses,
            "server_cores": None if self.server_cores is None else round(self.server_cores, 2),
            "locust_cores": round(self.locust_cores, 2),
        }


@dataclass
class LocustTarget:
    """Locust's destination and load: the API URL, the bodies file, the API key and the CPU meter."""

    host: str
    bodies: Path
    api_key: str
    tag: str
    work_dir: Path
    locust_core: int
    meter: CpuMeter
    offset: int = 0
    runs: int = field(default=0)


def users_for(rps: float) -> int:
    # Enough users that each waits at least 40 ms between its requests at the target rate,
    # so a user is not late while latency stays below the 25 ms limit.
    return max(8, min(256, math.ceil(rps * 0.04)))


def run_locust(target: LocustTarget, rps: float, duration_s: float, users: int | None = None) -> LoadStep:
    """Run Locust headless for `duration_s` at `rps` (0: as fast as `users` users can) and measure it."""
    users = users or users_for(rps)
    target.runs += 1
    out = target.work_dir / f"locust-{target.tag}-{target.runs}.json"
    log = target.work_dir / f"locust-{target.tag}-{target.runs}.log"
    locust = Path(sys.executable).parent / "locust"
    argv = [
        "taskset", "-c", str(target.locust_core), str(locust), "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{duration_s:.0f}s", "--host", target.host,
        "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5",
        "--jg-bodies", str(target.bodies), "--jg-key", target.api_key, "--jg-rps", str(rps),
        "--jg-offset", str(target.offset), "--jg-tag", target.tag, "--jg-out", str(out),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    with open(log, "w") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        _, _, usage = os.wait4(process.pid, 0)
        process.returncode = 0
    locust_cpu_s = usage.ru_utime + usage.ru_stime
    if not out.exists():
        raise RuntimeError(f"Locust wrote no results; see {log}:\n{log.read_text()[-2000:]}")
    data = json.loads(out.read_text())
    target.offset += len(data["latency_ms"])
    return _measure(data, rps, users, target.meter, locust_cpu_s, duration_s)


def _measure(data: dict, rps: float, users: int, meter: CpuMeter, locust_cpu_s: float, duration_s: float) -> LoadStep:
    start_s = np.asarray(data["start_s"], dtype=np.float64)
    latency_ms = np.asarray(data["latency_ms"], dtype=np.float64)
    ok = np.asarray(data["ok"], dtype=bool)
    if start_s.size == 0:
        return LoadStep(rps, users, 0.0, math.inf, math.inf, 0, 0, data["status"], None, locust_cpu_s / duration_s, 0)
    window_start_s = start_s.min() + WARMUP_S
    window_end_s = start_s.max()
    inside = start_s >= window_start_s
    span_s = max(window_end_s - window_start_s, 1e-3)
    measured = latency_ms[inside]
    return LoadStep(
        target_rps=rps,
        users=users,
        achieved_rps=float(inside.sum() / span_s),
        p50_ms=float(np.percentile(measured, 50)) if measured.size else math.inf,
        p99_ms=float(np.percentile(measured, 99)) if measured.size else math.inf,
        requests=int(inside.sum()),
        errors=int((~ok[inside]).sum()),
        statuses=data["status"],
        server_cores=meter.cores(window_start_s, window_end_s),
        locust_cores=locust_cpu_s / duration_s,
        rows_sent=int(start_s.size),
    )


# ---------------------------------------------------------------- rate search


@dataclass
class SearchResult:
    """The steps of a search and the best one: the highest achieved rate with p99 within the limit."""

    max_p99_ms: float
    steps: list[LoadStep]

    @property
    def best(self) -> LoadStep | None:
        passing = [step for step in self.steps if step.meets(self.max_p99_ms)]
        return max(passing, key=lambda step: step.achieved_rps) if passing else None


def search_max_rate(
    target: LocustTarget, *, start_rps: float, max_p99_ms: float, step_s: float, budget_s: float,
    growth: float = 1.6, refinements: int = 2, log: Callable[[str], object] = print,
) -> SearchResult:
    """Raise the rate by `growth` until a step fails, then bisect `refinements` times between pass and fail.

    Stops early when `budget_s` is used up; each step sends fresh rows.
    """
    result = SearchResult(max_p99_ms, [])
    deadline = time.monotonic() + budget_s
    low, high = 0.0, math.inf
    rps = start_rps
    while time.monotonic() + step_s < deadline:
        step = run_locust(target, rps, step_s)
        result.steps.append(step)
        log(f"  {rps:8.0f} req/s target: {step.achieved_rps:8.1f} achieved, p50 {step.p50_ms:6.1f} ms, "
            f"p99 {step.p99_ms:7.1f} ms, errors {step.errors}, server {step.server_cores or 0:.2f} cores, "
            f"locust {step.locust_cores:.2f} cores -> {'pass' if step.meets(max_p99_ms) else 'fail'}")
        if step.meets(max_p99_ms):
            low = max(low, rps)
        else:
            high = min(high, rps)
        if math.isinf(high):
            rps = rps * growth
            continue
        if low == 0.0:
            rps = high / growth
            if rps < 5:
                break
            continue
        if refinements == 0:
            break
        refinements -= 1
        rps = math.sqrt(low * high)
    return result
