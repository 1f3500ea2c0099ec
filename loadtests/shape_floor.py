"""The floor of the cluster's request path: `python -m loadtests.shape_floor`.

The benchmark's cluster pays for two things that the baseline app does not: the work of its
shape (HAProxy, the Serve replicas, three actor hops, the actor processes) and the domain work
spread over them. This run measures the shape alone. It starts a cluster with
`cluster.bootstrap.up`, then deploys a second Serve application at `/floor` whose ingress
replicas are the real `cluster.ingress.Ingress`, with the same settings, but whose actors do
no domain work:

- the GrantLedger primaries and replicas plan each submission in memory, without the Redis
  commit, the audit stream or provisioning;
- the RiskScorer returns a fixed score, without encoding or numpy;
- the PolicyActors are the real ones (their decision cache returns nearly every decision).

The ingress still validates and authenticates each request, reads its idempotency key from
Redis and makes its three channel calls. The benchmark's load search (Locust pinned to
`--locust-core`, p99 <= 25 ms) then runs on the baseline app and on the floor app in turn,
`--rounds` times, so that both see the same machine. The last line of stdout is one JSON
object with every search's best rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from actors.ledger import actor as ledger_actor
from actors.risk import actor as risk_actor
from cluster.bootstrap import down, ray_driver_env, up
from cluster.settings import Settings
from jitgate.cli._parser import parse_positive_int
from loadtests import bench, loadgen, servers, workload
from loadtests.bench import log

FLOOR_APP = "floor"
FLOOR_PREFIX = "/floor"
FLOOR_NAMESPACE = "jitgate-floor"
FIXED_RISK_SCORE = 12.5
READY_TIMEOUT_S = 90.0
FLOOR_BODIES = "floor.tsv"


class GrantLedger(ledger_actor.GrantLedger):
    """A ledger actor that keeps plans in memory only: no commit, no stream, no provisioning.

    The class name is the real one, because the actor channel serves methods by class name.
    """

    async def _persist_many(self, plans: list) -> list:
        for plan in plans:
            self.state.apply(plan)
        self._wake.set()
        return [None] * len(plans)

    async def _apply_access(self, grant: Any) -> None:
        return None

    async def _follow(self) -> None:
        await asyncio.Event().wait()

    async def _watch_targets(self) -> None:
        await asyncio.Event().wait()


class RiskScorer(risk_actor.RiskScorer):
    """A risk scorer that returns `FIXED_RISK_SCORE` and no factors for every request."""

    def _score_request_columns(self, requests: dict[str, Any]) -> tuple[list[float], list[list[dict]]]:
        n_rows = len(requests["principal"])
        return [FIXED_RISK_SCORE] * n_rows, [[] for _ in range(n_rows)]


def deploy_floor(settings: Settings, up_result: Any) -> None:
    """Start the actors that do no domain work under the names the ingress looks up, then the floor app."""
    import ray
    from ray import serve

    from cluster.backends import actor_options, frozen_after_init, ledger_config
    from cluster.channel import served
    from cluster.ingress import Ingress

    floor_settings = settings.model_copy(update={
        "namespace": FLOOR_NAMESPACE, "state_dir": up_result.state_dir,
        "redis_url": up_result.redis_url, "target_redis_url": up_result.target_redis_url,
    })
    ray.init(address=up_result.ray_address, namespace=FLOOR_NAMESPACE, log_to_driver=False)
    options = actor_options(FLOOR_NAMESPACE)
    ledgers = [
        ray.remote(frozen_after_init(served(GrantLedger))).options(name=name, **options)
        .remote(shard, ledger_config(floor_settings), role=role)
        for shard in range(floor_settings.ledger_shards)
        for name, role in ((f"jitgate-ledger-{shard}", "primary"), (f"jitgate-ledger-{shard}-replica", "replica"))
    ]
    for index in range(floor_settings.risk_scorers):
        ray.remote(frozen_after_init(served(RiskScorer))).options(name=f"jitgate-risk-{index}", **options).remote(
            str(floor_settings.risk_model_path)
        )
    ray.get([ledger.ready.remote() for ledger in ledgers], timeout=READY_TIMEOUT_S)
    # The cluster's own replicas hold the head's CPUs, so these ask for none.
    app = Ingress.options(num_replicas=floor_settings.ingress_replicas, ray_actor_options={"num_cpus": 0})
    serve.run(app.bind(floor_settings.model_dump(mode="json")), name=FLOOR_APP, route_prefix=FLOOR_PREFIX, blocking=False)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{up_result.api_url}{FLOOR_PREFIX}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the floor app was not ready within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def search_baseline(bodies: Path, work_dir: Path, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    state_dir = work_dir / f"b{round_no}"
    server = servers.BaselineServer.start(state_dir, work_dir / f"baseline-{round_no}.log")
    try:
        with loadgen.CpuMeter(server.processes) as meter:
            target = loadgen.LocustTarget(
                host=server.api_url, bodies=bodies, api_key=servers.replay_key(state_dir), tag=f"{args.tag}-b{round_no}",
                work_dir=work_dir, locust_core=args.locust_core, meter=meter,
            )
            return bench.request_search("baseline", target, args.search_budget_s, args.start_rps)
    finally:
        server.stop()


def search_floor(bodies: Path, work_dir: Path, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    settings = Settings(state_dir=work_dir / f"c{round_no}", dashboard=False, http_port=servers.free_port(), ingress=args.ingress)
    try:
        up_result = up(settings, out=lambda line: None)
        os.environ.update(ray_driver_env(settings))
        deploy_floor(settings, up_result)
        with loadgen.CpuMeter(servers.cluster_processes(settings)) as meter:
            target = loadgen.LocustTarget(
                host=up_result.api_url, bodies=bodies, api_key=servers.replay_key(settings.state_dir),
                tag=f"{args.tag}-f{round_no}", work_dir=work_dir, locust_core=args.locust_core, meter=meter,
            )
            return bench.request_search(f"floor ({settings.ingress})", target, args.search_budget_s, args.start_rps)
    finally:
        import ray

        ray.shutdown()
        down(settings, out=lambda line: None)


def search_floor_in_subprocess(work_dir: Path, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    """Run `search_floor` in a new process: Ray reads a cluster's authentication settings once, on import."""
    out = work_dir / f"floor-{round_no}.json"
    argv = [
        sys.executable, "-m", "loadtests.shape_floor", "--floor-round", str(round_no), "--work-dir", str(work_dir),
        "--search-budget-s", str(args.search_budget_s), "--start-rps", str(args.start_rps),
        "--locust-core", str(args.locust_core), "--ingress", args.ingress, "--tag", args.tag,
    ]
    subprocess.run(argv, check=True)
    return json.loads(out.read_text())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.shape_floor", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=parse_positive_int, default=1, help="Searches of each app, alternating, baseline first.")
    parser.add_argument("--search-budget-s", type=float, default=90.0, help="Upper bound of one load search in seconds.")
    parser.add_argument("--start-rps", type=float, default=100.0, help="First rate of a load search, requests/s.")
    parser.add_argument("--rows", type=int, default=40_000, help="Rows of the access log to replay.")
    parser.add_argument("--locust-core", type=int, default=1, help="CPU that Locust is pinned to with taskset.")
    parser.add_argument("--ingress", choices=("proxy", "direct", "haproxy"), default="haproxy",
                        help="Ingress mode of the cluster; haproxy, as in the recorded benchmark runs.")
    parser.add_argument("--keep-work-dir", action="store_true", help="Keep the Locust samples, logs and state dirs.")
    # Set by the run for each floor search, which runs in a process of its own.
    parser.add_argument("--floor-round", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.floor_round is not None:
        result = search_floor(args.work_dir / FLOOR_BODIES, args.work_dir, args, args.floor_round)
        (args.work_dir / f"floor-{args.floor_round}.json").write_text(json.dumps(result))
        return 0

    args.tag = f"f{int(time.time())}"
    # Short, because Ray's Unix socket paths under the state dirs must fit in 107 bytes.
    work_dir = Path(tempfile.mkdtemp(prefix="jgf-", dir="/tmp"))
    log(f"work dir {work_dir}, load average {os.getloadavg()}")

    plans = workload.load_plans(limit=args.rows)
    requests = work_dir / "requests.tsv"
    workload.write_bodies(requests, workload.REQUESTS_PATH, (workload.request_body(p) for p in plans))
    floor_requests = work_dir / FLOOR_BODIES
    workload.write_bodies(floor_requests, FLOOR_PREFIX + workload.REQUESTS_PATH, (workload.request_body(p) for p in plans))

    results: dict[str, list] = {"baseline": [], "floor": []}
    try:
        for round_no in range(args.rounds):
            results["baseline"].append(search_baseline(requests, work_dir, args, round_no))
            results["floor"].append(search_floor_in_subprocess(work_dir, args, round_no))
    finally:
        if not args.keep_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    summary = {
        f"{name}_rps": [search["best"]["achieved_rps"] if search["best"] else 0.0 for search in searches]
        for name, searches in results.items()
    }
    summary["floor_p99_ms_half_load"] = [s["half_load"]["p99_ms"] if "half_load" in s else None for s in results["floor"]]
    summary["load_average_after"] = os.getloadavg()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
