"""Measurements that need a Ray driver connected to a running jitgate cluster.

Import this module only after `cluster.bootstrap.ray_driver_env(settings)` is in
`os.environ`, because Ray reads its authentication settings when it is imported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray import serve

from actors.domain.columns import pack_column
from cluster.bootstrap import APP_NAME
from cluster.settings import Settings
from loadtests.inprocess import RISK_BATCH_SIZES


def connect(address: str, settings: Settings) -> None:
    ray.init(address=address, namespace=settings.namespace, log_to_driver=False)


def disconnect() -> None:
    ray.shutdown()


def _actor(name: str, settings: Settings) -> Any:
    return ray.get_actor(name, namespace=settings.namespace)


def policy_cache_stats(settings: Settings) -> dict[str, int]:
    """Return the summed decision cache counters of every policy engine: the actors', or each ingress replica's."""
    if settings.decisions_in_ingress:
        per_replica = _each_replica(lambda handle: handle.policy_cache_stats.remote(), settings.ingress_replicas)
        stats = list(per_replica.values())
    else:
        stats = ray.get([_actor(f"jitgate-policy-{i}", settings).cache_stats.remote() for i in range(settings.policy_shards)])
    return {name: sum(s[name] for s in stats) for name in ("hits", "misses", "size")}


def clear_policy_caches(settings: Settings) -> None:
    """Empty the decision cache of every policy engine by reloading the same bundle."""
    if settings.decisions_in_ingress:
        _each_replica(lambda handle: handle.clear_policy_caches.remote(), settings.ingress_replicas)
        return
    ray.get([
        _actor(f"jitgate-policy-{i}", settings).load_bundle.remote(str(settings.policy_dir))
        for i in range(settings.policy_shards)
    ])


def _each_replica(call: Callable[[Any], Any], replicas: int, max_calls: int = 200) -> dict[str, Any]:
    """Call an ingress method until every replica has answered once; returns the results by replica id.

    A handle routes each call to one replica of its choice and Serve offers no broadcast, so
    the calls repeat until `replicas` distinct replicas are seen. Calling a replica twice is
    harmless for the methods used here.
    """
    handle = serve.get_app_handle(APP_NAME)
    found: dict[str, Any] = {}
    for _ in range(max_calls):
        result = call(handle).result()
        replica = result["replica"] if isinstance(result, dict) else result
        found.setdefault(replica, result)
        if len(found) >= replicas:
            return found
    raise RuntimeError(f"only {len(found)} of {replicas} ingress replicas answered within {max_calls} calls")


def check_batch_through_handle(columns: dict[str, list[str]], *, duration_s: float, in_flight: int) -> dict[str, float]:
    """Call the ingress's `check_columns` through a `DeploymentHandle` with `in_flight` calls outstanding.

    Each call packs the columns again, so the timing includes the caller's share of the work.
    """
    handle = serve.get_app_handle(APP_NAME)
    count = len(columns["principals"])

    def packed() -> tuple[bytes, ...]:
        return tuple(pack_column(columns[name]) for name in ("principals", "resources", "roles"))

    async def run() -> dict[str, float]:
        latencies_ms: list[float] = []
        deadline = time.perf_counter() + duration_s

        async def caller() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                result = await handle.check_columns.remote(*packed())
                assert len(result["allowed"]) == count
                latencies_ms.append(1000 * (time.perf_counter() - started))

        # Warm-up: the first call through a new handle waits for the router to learn the replicas.
        await handle.check_columns.remote(*packed())
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        elapsed_s = time.perf_counter() - started
        return {
            "calls": len(latencies_ms), "checks_per_call": count, "checks_per_s": len(latencies_ms) * count / elapsed_s,
            "p50_ms": float(np.percentile(latencies_ms, 50)), "p99_ms": float(np.percentile(latencies_ms, 99)),
            "in_flight": in_flight,
        }

    return asyncio.run(run())


def risk_actor_rates(settings: Settings, columns: dict[str, np.ndarray], context: dict[str, np.ndarray],
                     batch_sizes: Sequence[int] = RISK_BATCH_SIZES, min_time_s: float = 0.5) -> list[dict[str, float]]:
    """Time `RiskScorer.score_columns` through its actor handle, one call at a time, per batch size."""
    scorer = _actor("jitgate-risk-0", settings)
    rates = []
    for batch_rows in batch_sizes:
        batch_columns = {name: np.ascontiguousarray(values[:batch_rows]) for name, values in columns.items()}
        batch_context = {name: np.ascontiguousarray(values[:batch_rows]) for name, values in context.items()}
        row = {"batch_rows": batch_rows}
        for label, with_factors in (("score_rows_per_s", False), ("score_factors_rows_per_s", True)):
            ray.get(scorer.score_columns.remote(batch_columns, batch_context, with_factors))
            calls = 0
            started = time.perf_counter()
            while time.perf_counter() - started < min_time_s:
                ray.get(scorer.score_columns.remote(batch_columns, batch_context, with_factors))
                calls += 1
            row[label] = calls * batch_rows / (time.perf_counter() - started)
        rates.append(row)
    return rates
