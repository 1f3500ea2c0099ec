"""Failover scenarios under load: `python -m loadtests.failover`.

Starts a local cluster with `cluster.bootstrap.up`, so it runs in whatever ingress mode
`jitgate up` uses, then runs one scenario per fault. In each, Locust replays rows of the Amazon
access log as short grants (3-8 s) from its own process, pinned to CPU 1. A share of the requests
name `redis://target/<unique prefix>` resources, whose grants become Redis ACL users on the
target Redis. Locust also checks every granted entitlement before and after its deadline.
During the load the scenario kills one part:

    risk      SIGKILL the RiskScorer actor `jitgate-risk-0`
    policy    SIGKILL the PolicyActor `jitgate-policy-0`
    ledger    SIGKILL the GrantLedger primary `jitgate-ledger-0`
    replica   SIGKILL one Serve ingress replica
    redis     SIGKILL the state Redis, restart it after `--redis-outage-s` on the same AOF
    node      SIGKILL the process group of a second Ray node that holds a ledger primary

Afterwards it reads every acknowledged request and grant back through the API, reads the audit
stream, prints one JSON line per scenario (figures defined in `loadtests.failover_metrics`),
writes the table and a throughput chart between the failover markers of loadtests/RESULTS.md,
and stops the cluster. Every loop and wait has a time limit; the whole run takes about 7 minutes
on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
import yaml

from actors.ledger import ledger_shard
from actors.ledger.plan import shard_key
from actors.provisioners.redis_acl import acl_username
from cluster import processes
from cluster.backends import policy_shard_of
from cluster.bootstrap import APP_NAME, _state_paths, down, load_cluster_record, ray_driver_env, up
from cluster.redis_server import attach_local_redis, ping
from cluster.settings import Settings
from jitgate.replay import DEFAULT_LOG_PATH, LogRow, plan_request, read_log
from loadtests import failover_metrics as metrics
from loadtests.failover_report import ScenarioReport, write_results

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "failover_locustfile.py"
RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"
CHART_FILE = Path(__file__).resolve().parent / "failover.png"

SCENARIOS = ("risk", "policy", "ledger", "replica", "redis", "node")
# 8 Submitter and 16 Checker users: the fixed_count values in failover_locustfile.py.
LOCUST_USERS = 24
LOCUST_CPU = "1"
MIN_DURATION_S, MAX_DURATION_S = 3, 8
CHECK_OFFSETS_MS = (-1000, 0, 200, 1000)
ACL_POLL_S = 0.01
READY_TIMEOUT_S = 90.0
ACTOR_RESTART_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0
READBACK_CONCURRENCY = 16
WORKER_OBJECT_STORE_BYTES = 100 * 1024 * 1024
PLACEMENT_ATTEMPTS = 8


# ---------------------------------------------------------------- ACL watcher


class AclWatcher(threading.Thread):
    """Lists the target Redis's ACL users every `period_s` and records when each one disappears.

    `ACL USERS` returns every user name in one call, so one poll covers all grants at once. It
    observes the same as one `ACL GETUSER` per grant would.
    """

    def __init__(self, url: str, period_s: float = ACL_POLL_S) -> None:
        super().__init__(name="acl-watcher", daemon=True)
        self.url = url
        self.period_s = period_s
        self.polls = 0
        self.errors = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._observations: dict[str, list[float | None]] = {}
        self._present: set[str] = set()

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            while not self._halt.is_set():
                self._poll(client)
                self._halt.wait(self.period_s)
        finally:
            client.close()

    def _poll(self, client: redis.Redis) -> None:
        try:
            users = {name.decode() for name in client.execute_command("ACL", "USERS")}
        except (redis.RedisError, OSError):
            self.errors += 1
            return
        # The reply time bounds the removal from above, because the user was gone when Redis replied.
        replied_ms = time.time() * 1000
        with self._lock:
            for name in users:
                observation = self._observations.get(name)
                if observation is None:
                    self._observations[name] = [replied_ms, replied_ms, None]
                else:
                    observation[1] = replied_ms
                    observation[2] = None
            for name in self._present - users:
                self._observations[name][2] = replied_ms
            self._present = users
            self.polls += 1

    def snapshot(self) -> dict[str, metrics.AclObservation]:
        with self._lock:
            return {name: metrics.AclObservation(*values) for name, values in self._observations.items()}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# ---------------------------------------------------------------- cluster access


def _where(actor_self: Any) -> tuple[int, str]:
    import ray

    return os.getpid(), ray.get_runtime_context().get_node_id()


@dataclass
class LocalCluster:
    """The cluster `up` started, with a Ray driver connected to it."""

    settings: Settings
    api_url: str
    redis_url: str
    target_redis_url: str
    ray_address: str
    keys: dict[str, str]
    ray: Any = None

    @property
    def state_dir(self) -> Path:
        return _state_paths(self.settings).root

    def connect(self) -> None:
        # Set before Ray reads them, so the driver authenticates with the head's token.
        os.environ.update(ray_driver_env(self.settings))
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        import ray

        ray.init(address=self.ray_address, namespace=self.settings.namespace, log_to_driver=False)
        self.ray = ray

    def process_of(self, name: str, namespace: str | None = None) -> tuple[int, str]:
        """Return (pid, node id) of a named actor."""
        handle = self.ray.get_actor(name, namespace=namespace or self.settings.namespace)
        return self.ray.get(handle.__ray_call__.remote(_where), timeout=15)

    def place_shard_again(self, shard: int) -> None:
        """Remove a ledger shard's placement group (ending its actors) and create the shard again."""
        from ray.util import get_placement_group, remove_placement_group

        from cluster.backends import RayBackends

        names = (f"jitgate-ledger-{shard}", f"jitgate-ledger-{shard}-replica")
        for name in names:
            self.ray.kill(self.ray.get_actor(name, namespace=self.settings.namespace), no_restart=True)
        remove_placement_group(get_placement_group(f"jitgate-ledger-{shard}-placement"))
        deadline = time.monotonic() + 30
        while any(_named_actor_alive(self.ray, name, self.settings.namespace) for name in names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ledger shard {shard} actors still alive 30 s after removing their placement group")
            time.sleep(0.1)
        # The same settings the app was deployed with: `up` fills in the embedded Redis URLs.
        backends = RayBackends(
            self.settings.model_copy(update={"redis_url": self.redis_url, "target_redis_url": self.target_redis_url})
        )
        self.ray.get([backends.ledgers[shard].ready.remote(), backends.replicas[shard].ready.remote()], timeout=60)

    def serve_replica_names(self) -> list[str]:
        prefix = f"SERVE_REPLICA::{APP_NAME}#ingress#"
        return sorted(a["name"] for a in self.ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))

    def running_ingress_replicas(self) -> int:
        from ray import serve

        application = serve.status().applications.get(APP_NAME)
        if application is None:
            return 0
        return application.deployments["ingress"].replica_states.get("RUNNING", 0)

    def head_node_id(self) -> str:
        return next(n["NodeID"] for n in self.ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])

    def alive_nodes(self) -> list[str]:
        return [n["NodeID"] for n in self.ray.nodes() if n["Alive"]]

    def readyz(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def start_cluster(state_dir: Path, out: Callable[[str], object]) -> LocalCluster:
    settings = Settings(state_dir=state_dir, dashboard=False, http_port=_free_port())
    up(settings, out=out)
    record = load_cluster_record(_state_paths(settings))
    credentials = yaml.safe_load((state_dir / "credentials.yaml").read_text())
    cluster = LocalCluster(
        settings=settings, api_url=record.api_url, redis_url=record.redis_url, target_redis_url=record.target_redis_url,
        ray_address=record.ray_address, keys={name: p["key"] for name, p in credentials["profiles"].items()},
    )
    cluster.connect()
    return cluster


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout_s: float, description: str, interval_s: float = 0.1) -> float:
    """Poll `condition` until it is truthy and return the seconds waited; raise TimeoutError naming `description`."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - a part that is restarting may fail the probe itself
            pass
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {description}")
        time.sleep(interval_s)


def _named_actor_alive(ray: Any, name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True


def kill_pid(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout_s: float = 5.0) -> float:
    """Wait until `pid` has exited (a zombie counts, its sockets are closed) and return the time in epoch ms."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.001)
    return time.time() * 1000


def wait_restarted(cluster: LocalCluster, name: str, old_pid: int, namespace: str | None = None) -> tuple[int, str]:
    found: list[tuple[int, str]] = []

    def restarted() -> bool:
        found[:] = [cluster.process_of(name, namespace)]
        return found[0][0] != old_pid

    wait_until(restarted, ACTOR_RESTART_TIMEOUT_S, f"actor {name} to restart", interval_s=0.2)
    return found[0]


# ---------------------------------------------------------------- worker node


class WorkerNode:
    """A second Ray node on this host (`ray start --block` in a session of its own), killed by process group."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.temp_dir = cluster.state_dir / "rw"
        self.log_path = cluster.state_dir / "logs" / "worker-node.log"
        self.popen: subprocess.Popen | None = None
        self.record: processes.ProcessRecord | None = None
        self.node_id: str | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("RAY_AUTH_TOKEN", None)
        env.pop("RAY_ADDRESS", None)
        env.update(ray_driver_env(self.cluster.settings))
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_worker_niceness"] = str(self.cluster.settings.worker_niceness)
        # Actors placed on this node import `actors` and `cluster` from this checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        argv = [
            str(Path(sys.executable).parent / "ray"), "start", "--block",
            "--address", self.cluster.ray_address,
            "--num-cpus", "1",
            "--object-store-memory", str(WORKER_OBJECT_STORE_BYTES),
            "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(self.temp_dir),
            "--disable-usage-stats",
        ]  # fmt: skip
        before = set(self.cluster.alive_nodes())
        self.temp_dir.mkdir(mode=0o700, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                          start_new_session=True)
        self.record = processes.ProcessRecord.of(self.popen.pid)
        joined: list[str] = []

        def node_joined() -> bool:
            joined[:] = [n for n in self.cluster.alive_nodes() if n not in before]
            return bool(joined)

        wait_until(node_joined, 90, f"the worker node to join (see {self.log_path})", interval_s=0.5)
        self.node_id = joined[0]

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as a machine failure would.

        That is the process group of `ray start` (raylet, agents) and the workers, which the
        raylet moves to process groups of their own in the same session. Killing the group alone
        leaves the actor processes serving direct calls until they notice their raylet is gone.
        """
        assert self.popen is not None and self.record is not None
        members = processes.session_members(self.record)
        os.killpg(self.record.pgid, signal.SIGKILL)
        for member in members:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Workers of the node leave its process group; their command lines name its temp dir.
        leftovers = processes.processes_using_path(self.temp_dir)
        if leftovers:
            processes.terminate_processes(leftovers, 5.0)


# ---------------------------------------------------------------- plans


def build_submissions(rows: list[LogRow], scenario: str, run_id: str, target_share: float) -> list[dict[str, Any]]:
    """Turn log rows into access requests with 3-8 s grants; a share targets unique redis://target/ prefixes."""
    submissions = []
    for row in rows:
        planned = plan_request(row)
        rng = random.Random(f"failover:{scenario}:{row.row_id}")
        resource = planned.resource
        context = planned.context.model_dump(mode="json")
        if rng.random() < target_share:
            # A unique prefix per request, so these grants never conflict and each has its own ACL user.
            resource = f"redis://target/fo{run_id}{scenario}r{row.row_id}"
        body = {
            "principal": planned.principal,
            "principal_attributes": planned.principal_attributes,
            "resource": resource,
            "role": planned.role,
            "duration_s": rng.randint(MIN_DURATION_S, MAX_DURATION_S),
            "reason": planned.reason,
            "context": context,
        }
        submissions.append({"body": body, "idempotency_key": f"failover-{run_id}-{scenario}-{row.row_id}"})
    return submissions


# ---------------------------------------------------------------- read-back


async def _get_json(client: httpx.AsyncClient, path: str) -> tuple[bool, dict[str, Any] | None]:
    """GET with three attempts; (True, record) on 200, (True, None) on 404, (False, None) otherwise."""
    for attempt in range(3):
        try:
            response = await client.get(path)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 200:
            return True, response.json()
        if response is not None and response.status_code == 404:
            return True, None
        await asyncio.sleep(0.5 * (attempt + 1))
    return False, None


async def _read_many(api_url: str, key: str, paths: dict[Any, str]) -> tuple[dict[Any, Any], int]:
    semaphore = asyncio.Semaphore(READBACK_CONCURRENCY)
    found: dict[str, Any] = {}
    failed = 0
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:

        async def one(item_id: Any, path: str) -> None:
            nonlocal failed
            async with semaphore:
                ok, record = await _get_json(client, path)
            if ok:
                found[item_id] = record
            else:
                failed += 1

        await asyncio.gather(*(one(item_id, path) for item_id, path in paths.items()))
    return found, failed


def read_back(cluster: LocalCluster, records: list[dict[str, Any]]) -> tuple[dict, dict, int]:
    acknowledged = [r for r in records if metrics.is_acknowledged(r)]
    request_paths = {r["request_id"]: f"/v1/requests/{r['request_id']}" for r in acknowledged}
    grant_paths = {r["grant_id"]: f"/v1/grants/{r['grant_id']}" for r in acknowledged if r.get("grant_id")}
    key = cluster.keys["replay"]
    paths = {**{("request", i): p for i, p in request_paths.items()}, **{("grant", i): p for i, p in grant_paths.items()}}
    found, failed = asyncio.run(_read_many(cluster.api_url, key, paths))
    requests = {item_id: record for (kind, item_id), record in found.items() if kind == "request"}
    grants = {item_id: record for (kind, item_id), record in found.items() if kind == "grant"}
    return requests, grants, failed


def audit_positions(cluster: LocalCluster) -> dict[int, str]:
    """Return the last audit stream id of each ledger shard, read from Redis, as the start of a scenario."""
    client = redis.Redis.from_url(cluster.redis_url, socket_timeout=5)
    try:
        positions = {}
        for shard in range(cluster.settings.ledger_shards):
            last = client.xrevrange(shard_key(shard, "audit"), count=1)
            positions[shard] = last[0][0].decode() if last else "0-0"
        return positions
    finally:
        client.close()


def read_audit(cluster: LocalCluster, positions: dict[int, str], max_pages: int = 100) -> list[dict[str, Any]]:
    """Read the audit events after `positions` through `GET /v1/audit`, shard by shard."""
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {cluster.keys['admin']}"}
    with httpx.Client(base_url=cluster.api_url, headers=headers, timeout=30) as client:
        for shard, position in positions.items():
            after = f"{shard}:{position}"
            for _ in range(max_pages):
                response = client.get("/v1/audit", params={"shard": shard, "after": after, "limit": 10_000})
                response.raise_for_status()
                page = response.json()
                if not page["items"]:
                    break
                events.extend(page["items"])
                after = page["next"]
    return events


# ---------------------------------------------------------------- scenarios


@dataclass
class KillOutcome:
    """Record of one kill: its target, its time and the requests it affects."""

    kill_ms: float
    target: str
    affected: Callable[[dict[str, Any]], bool] = lambda record: True
    outage: metrics.Outage | None = None
    # Time the killed process was gone. Requests sent before it still reached the process.
    gone_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Scenarios:
    """The kill of each scenario, and the preparation the node scenario needs."""

    def __init__(self, cluster: LocalCluster, redis_outage_s: float, log: Callable[[str], object]) -> None:
        self.cluster = cluster
        self.redis_outage_s = redis_outage_s
        self.log = log
        self.worker: WorkerNode | None = None
        self.background: list[threading.Thread] = []

    def prepare(self, scenario: str) -> dict[str, Any]:
        if scenario != "node":
            return {}
        self.worker = WorkerNode(self.cluster)
        self.worker.start()
        self.log(f"worker node {self.worker.node_id[:8]} joined; placing a ledger primary on it")
        return self._place_primary_on_worker()

    def _ledger_placement(self) -> dict[str, tuple[int, str]]:
        names = [f"jitgate-ledger-{i}{suffix}" for i in range(self.cluster.settings.ledger_shards) for suffix in ("", "-replica")]
        return {name: self.cluster.process_of(name) for name in names}

    def _place_primary_on_worker(self) -> dict[str, Any]:
        """Place a shard again until its primary runs on the worker and its replica on the head.

        The shards' placement groups were created before the worker joined, so both bundles sit on
        the head. Removing a shard's group ends its two actors; creating the shard again (as the
        ingress does when it finds the actors gone) spreads the new group over both nodes, in
        either order, so this retries a bounded number of times.
        """
        worker = self.worker.node_id
        shards = self.cluster.settings.ledger_shards
        restarts = 0
        for attempt in range(PLACEMENT_ATTEMPTS + 1):
            placement = self._ledger_placement()
            for shard in range(shards):
                primary_node = placement[f"jitgate-ledger-{shard}"][1]
                replica_node = placement[f"jitgate-ledger-{shard}-replica"][1]
                if primary_node == worker and replica_node != worker:
                    return self._placement_details(placement, restarts)
            if attempt == PLACEMENT_ATTEMPTS:
                break
            self.cluster.place_shard_again(attempt % shards)
            restarts += 1
        return self._placement_details(placement, restarts)

    def _placement_details(self, placement: dict[str, tuple[int, str]], restarts: int) -> dict[str, Any]:
        worker = self.worker.node_id
        return {
            "placement_restarts": restarts,
            "on_worker": sorted(name for name, (_, node) in placement.items() if node == worker),
        }

    def kill(self, scenario: str) -> KillOutcome:
        return getattr(self, f"_kill_{scenario}")()

    def _kill_actor(self, name: str, affected: Callable[[dict[str, Any]], bool]) -> KillOutcome:
        pid, _ = self.cluster.process_of(name)
        kill_ms = time.time() * 1000
        kill_pid(pid)
        return KillOutcome(kill_ms, f"{name} (pid {pid})", affected)

    def _kill_risk(self) -> KillOutcome:
        return self._kill_actor("jitgate-risk-0", lambda record: True)

    def _kill_policy(self) -> KillOutcome:
        shards = self.cluster.settings.policy_shards
        return self._kill_actor("jitgate-policy-0", lambda record: policy_shard_of(record["resource"], shards) == 0)

    def _kill_ledger(self) -> KillOutcome:
        shards = self.cluster.settings.ledger_shards
        return self._kill_actor("jitgate-ledger-0", lambda record: ledger_shard(record["principal"], shards) == 0)

    def _kill_replica(self) -> KillOutcome:
        names = self.cluster.serve_replica_names()
        pid, _ = self.cluster.process_of(names[0], "serve")
        kill_ms = time.time() * 1000
        kill_pid(pid)
        outcome = KillOutcome(kill_ms, f"Serve replica {names[0].rsplit('#', 1)[1]} (pid {pid}) of {len(names)}")
        outcome.gone_ms = wait_gone(pid)
        outcome.details["process_gone_after_ms"] = round(outcome.gone_ms - kill_ms, 1)

        def watch_restore() -> None:
            def restored() -> bool:
                # A new replica name exists only after the controller noticed the death, so a
                # stale RUNNING count from before the kill cannot end the wait.
                current = self.cluster.serve_replica_names()
                replaced = names[0] not in current and bool(set(current) - set(names))
                return replaced and self.cluster.running_ingress_replicas() >= len(names)

            try:
                wait_until(restored, ACTOR_RESTART_TIMEOUT_S, "the ingress replica count", interval_s=0.2)
                outcome.details["replicas_restored_s"] = round((time.time() * 1000 - kill_ms) / 1000, 2)
            except TimeoutError:
                outcome.details["replicas_restored_s"] = None

        thread = threading.Thread(target=watch_restore, name="replica-restore", daemon=True)
        thread.start()
        self.background.append(thread)
        return outcome

    def _kill_redis(self) -> KillOutcome:
        server = attach_local_redis(self.cluster.state_dir, "redis", self.cluster.settings.redis_fsync)
        if server is None:
            raise RuntimeError(f"the state Redis under {self.cluster.state_dir} is not running")
        pid = server.pid
        kill_ms = time.time() * 1000
        server.kill()
        time.sleep(self.redis_outage_s)
        server.restart()
        wait_until(lambda: ping(server.url), 30, "the state Redis to answer PING")
        back_ms = time.time() * 1000
        return KillOutcome(kill_ms, f"state Redis (pid {pid}), restarted after {self.redis_outage_s:.0f} s",
                           outage=metrics.Outage(kill_ms, back_ms))

    def _kill_node(self) -> KillOutcome:
        assert self.worker is not None
        worker = self.worker.node_id
        placement = self._ledger_placement()
        shards = self.cluster.settings.ledger_shards
        dead_shards = {i for i in range(shards) if placement[f"jitgate-ledger-{i}"][1] == worker}
        on_worker = sorted(name for name, (_, node) in placement.items() if node == worker)
        kill_ms = time.time() * 1000
        self.worker.kill()
        outcome = KillOutcome(
            kill_ms, f"worker node {worker[:8]} with {', '.join(on_worker) or 'no ledger actor'}",
            (lambda record: ledger_shard(record["principal"], shards) in dead_shards) if dead_shards else (lambda record: True),
            details={"on_worker": on_worker},
        )
        return outcome

    def finish(self) -> None:
        for thread in self.background:
            thread.join(timeout=ACTOR_RESTART_TIMEOUT_S)
        self.background.clear()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()


# ---------------------------------------------------------------- one scenario


@dataclass
class RunOptions:
    submit_window_s: float
    kill_at_s: float
    submit_rate_per_s: float
    target_share: float
    redis_outage_s: float


def run_locust(cluster: LocalCluster, submissions: list[dict[str, Any]], work_dir: Path, options: RunOptions,
               on_started: Callable[[], None]) -> list[dict[str, Any]]:
    """Run Locust with the plan; call `on_started` once the users run; return the response records."""
    work_dir.mkdir(parents=True, exist_ok=True)
    output = work_dir / "responses.jsonl"
    started_file = work_dir / "started"
    plan = {
        "api_url": cluster.api_url,
        "api_key": cluster.keys["replay"],
        "submissions": submissions,
        "submit_rate_per_s": options.submit_rate_per_s,
        "check_offsets_ms": list(CHECK_OFFSETS_MS),
        "output": str(output),
        "started_file": str(started_file),
    }
    plan_path = work_dir / "plan.json"
    plan_path.write_text(json.dumps(plan))
    # Submissions end at the window, and the last grants expire MAX_DURATION_S later and get their
    # last check a second after that. The slack covers slow responses during a fault.
    run_time_s = int(options.submit_window_s + MAX_DURATION_S + max(CHECK_OFFSETS_MS) / 1000 + 20)
    argv = [
        "taskset", "-c", LOCUST_CPU, sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(LOCUST_USERS), "-r", str(LOCUST_USERS),
        "--run-time", f"{run_time_s}s", "--stop-timeout", "5",
        "--host", cluster.api_url, "--jg-plan", str(plan_path), "--loglevel", "WARNING",
    ]  # fmt: skip
    with open(work_dir / "locust.log", "wb") as log_file:
        locust = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        wait_until(started_file.exists, 60, f"Locust to start (see {work_dir / 'locust.log'})", interval_s=0.05)
        on_started()
        locust.wait(timeout=run_time_s + 60)
    except BaseException:
        if locust.poll() is None:
            locust.kill()
            locust.wait(timeout=10)
        raise
    if not output.exists():
        raise RuntimeError(f"Locust wrote no responses; see {work_dir / 'locust.log'}")
    return [json.loads(line) for line in output.read_text().splitlines() if line.strip()]


def run_scenario(
    scenario: str, cluster: LocalCluster, scenarios: Scenarios, watcher: AclWatcher, rows: list[LogRow],
    run_id: str, work_dir: Path, options: RunOptions, log: Callable[[str], object],
) -> ScenarioReport:
    load_before = os.getloadavg()[0]
    details = scenarios.prepare(scenario)
    wait_until(cluster.readyz, READY_TIMEOUT_S, "GET /readyz to return 200", interval_s=0.5)
    positions = audit_positions(cluster)
    submissions = build_submissions(rows, scenario, run_id, options.target_share)
    outcomes: list[KillOutcome] = []
    kill_errors: list[BaseException] = []

    def kill_when_due() -> None:
        time.sleep(options.kill_at_s)
        try:
            outcomes.append(scenarios.kill(scenario))
        except Exception as error:  # noqa: BLE001 - raised again in the main thread below
            kill_errors.append(error)
            return
        log(f"{scenario}: killed {outcomes[0].target}")

    killer = threading.Thread(target=kill_when_due, name=f"kill-{scenario}", daemon=True)
    responses = run_locust(cluster, submissions, work_dir / scenario, options, killer.start)
    killer.join(timeout=120)
    records = [r for r in responses if r["kind"] != "check_skipped"]
    scenarios.finish()
    if kill_errors:
        raise RuntimeError(f"scenario {scenario}: the kill failed: {kill_errors[0]}") from kill_errors[0]
    if not outcomes:
        raise RuntimeError(f"scenario {scenario}: the kill did not finish within 120 s")
    outcome = outcomes[0]
    outcome.details.update(details)

    wait_until(cluster.readyz, READY_TIMEOUT_S, "GET /readyz to return 200 after the kill", interval_s=0.5)
    target_grants = _target_grants(records)
    _settle(records, watcher, target_grants)
    stored_requests, stored_grants, readback_failures = read_back(cluster, records)
    audit_started_ms = time.time() * 1000
    events = read_audit(cluster, positions)
    terminal = Counter(e["subject"] for e in events if e["kind"] == "grant" and e["to_state"] in ("expired", "revoked"))

    figures: dict[str, Any] = {"scenario": scenario}
    figures.update(metrics.response_counts(records))
    figures["lost"] = len(metrics.lost_acknowledgements(records, stored_requests, stored_grants))
    figures["readback_failures"] = readback_failures
    figures["recovery_s"] = metrics.recovery_s(records, outcome.kill_ms, outcome.affected)
    figures.update(metrics.check_figures(records))
    figures["checks_skipped"] = len(responses) - len(records)
    figures.update(metrics.revoke_figures(target_grants, watcher.snapshot(), outage=_revoke_outage(outcome, figures)))
    deadlines = {r["grant_id"]: r["expires_ms"] for r in records if metrics.is_acknowledged(r) and r.get("grant_id")}
    figures.update(metrics.terminal_figures(deadlines, terminal, settled_ms=audit_started_ms - 3000))
    figures.update(metrics.in_flight_figures(records, outcome.kill_ms, outcome.gone_ms))
    figures.update(outcome.details)
    figures["killed"] = outcome.target
    figures["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    _save_diagnostics(work_dir / scenario, figures, target_grants, watcher)
    return ScenarioReport(figures=figures, series=metrics.throughput_series(records, outcome.kill_ms),
                          recovery_s=figures["recovery_s"])


def _save_diagnostics(directory: Path, figures: dict[str, Any], target_grants: list[tuple[str, float]],
                      watcher: AclWatcher) -> None:
    """Keep the figures and each target grant's ACL observation beside the responses, for `--keep` runs."""
    snapshot = watcher.snapshot()
    revokes = [{"username": name, "expires_ms": expires_ms, **(vars(snapshot[name]) if name in snapshot else {})}
               for name, expires_ms in target_grants]
    (directory / "figures.json").write_text(json.dumps(figures, indent=1))
    (directory / "revokes.json").write_text(json.dumps(revokes))


def _target_grants(records: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [
        (acl_username(r["principal"], r["resource"], "read"), r["expires_ms"])
        for r in records
        if metrics.is_acknowledged(r) and r.get("grant_id") and r["resource"].startswith("redis://target/")
    ]


def _revoke_outage(outcome: KillOutcome, figures: dict[str, Any]) -> metrics.Outage | None:
    """Return the outage that revoke lateness is also measured against: Redis down, or the node's ledger shard."""
    if outcome.outage is not None:
        return outcome.outage
    if outcome.target.startswith("worker node") and figures["recovery_s"] is not None:
        return metrics.Outage(outcome.kill_ms, outcome.kill_ms + figures["recovery_s"] * 1000)
    return None


def _settle(records: list[dict[str, Any]], watcher: AclWatcher, target_grants: list[tuple[str, float]]) -> None:
    """Wait until every grant's deadline passed and the watcher saw each target ACL user go, within a limit."""
    deadlines = [r["expires_ms"] for r in records if metrics.is_acknowledged(r) and r.get("expires_ms")]
    if deadlines:
        remaining_s = (max(deadlines) - time.time() * 1000) / 1000 + 1.0
        if remaining_s > 0:
            time.sleep(min(remaining_s, SETTLE_TIMEOUT_S))
    names = {name for name, _ in target_grants}

    def all_gone() -> bool:
        snapshot = watcher.snapshot()
        return all(snapshot.get(name) is None or snapshot[name].gone_ms is not None for name in names)

    try:
        wait_until(all_gone, SETTLE_TIMEOUT_S, "the target ACL users to be removed", interval_s=0.2)
    except TimeoutError:
        pass  # The figures report these users as acl_user_not_removed.


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--submit-window-s", type=float, default=30.0, help="seconds of access requests per scenario")
    parser.add_argument("--kill-at-s", type=float, default=8.0, help="seconds after the load starts when the kill happens")
    parser.add_argument("--submit-rate", type=float, default=25.0, help="access requests per second")
    parser.add_argument("--target-share", type=float, default=0.2, help="share of requests on redis://target/ resources")
    parser.add_argument("--redis-outage-s", type=float, default=5.0, help="seconds the state Redis stays down")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="Markdown file to update between the failover markers")
    parser.add_argument("--chart", type=Path, default=CHART_FILE, help="PNG chart of throughput around each kill")
    parser.add_argument("--no-results", action="store_true", help="print the JSON lines only; leave RESULTS.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the cluster running and its state dir")
    options = parser.parse_args(argv)
    chosen = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    if options.kill_at_s >= options.submit_window_s:
        parser.error(f"--kill-at-s ({options.kill_at_s}) must be less than --submit-window-s ({options.submit_window_s})")
    options.scenarios = chosen
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    run_options = RunOptions(options.submit_window_s, options.kill_at_s, options.submit_rate, options.target_share,
                             options.redis_outage_s)

    def log(line: str) -> None:
        print(f"[failover {datetime.now(UTC):%H:%M:%S}] {line}", file=sys.stderr, flush=True)

    started = time.monotonic()
    load_at_start = os.getloadavg()
    state_dir = Path(tempfile.mkdtemp(prefix="jgfo", dir="/tmp"))
    run_id = f"{int(time.time()) % 100_000:05d}"
    per_scenario = int(options.submit_rate * options.submit_window_s)
    all_rows = read_log(DEFAULT_LOG_PATH, per_scenario * len(SCENARIOS))
    log(f"starting the cluster in {state_dir}")
    cluster = start_cluster(state_dir, out=lambda line: log(str(line)))
    watcher = AclWatcher(cluster.target_redis_url)
    watcher.start()
    scenarios = Scenarios(cluster, options.redis_outage_s, log)
    reports: list[ScenarioReport] = []
    failed: dict[str, str] = {}
    try:
        for name in options.scenarios:
            index = SCENARIOS.index(name)
            rows = all_rows[index * per_scenario:(index + 1) * per_scenario]
            log(f"{name}: {len(rows)} access requests at {options.submit_rate:.0f}/s, kill after {options.kill_at_s:.0f} s")
            try:
                report = run_scenario(name, cluster, scenarios, watcher, rows, run_id, state_dir / "failover", run_options, log)
            except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as error:
                # The next scenarios still run; the results page lists this one as failed.
                log(f"{name}: scenario failed: {error!r}")
                failed[name] = repr(error)
                print(json.dumps({"scenario": name, "error": repr(error)}), flush=True)
                continue
            reports.append(report)
            print(json.dumps(report.figures), flush=True)
    finally:
        watcher.stop()
        scenarios.close()
        if cluster.ray is not None:
            cluster.ray.shutdown()
        if not options.keep:
            down(cluster.settings, out=lambda line: log(str(line)))
            shutil.rmtree(state_dir, ignore_errors=True)
    elapsed_s = time.monotonic() - started
    if not options.no_results:
        write_results(options.results, options.chart, reports, failed=failed, run_options=vars(run_options),
                      load_average=(load_at_start, os.getloadavg()), elapsed_s=elapsed_s, acl_poll_ms=ACL_POLL_S * 1000,
                      check_offsets_ms=CHECK_OFFSETS_MS, api_url=cluster.api_url)
        log(f"wrote {options.results} and {options.chart}")
    log(f"done in {elapsed_s:.0f} s")
    violations = [r.figures["scenario"] for r in reports if r.figures["lost"] or r.figures["check_true_after_expiry"]
                  or r.figures["terminal_missing"] or r.figures["terminal_duplicated"]]
    return 1 if violations or failed else 0


if __name__ == "__main__":
    sys.exit(main())
