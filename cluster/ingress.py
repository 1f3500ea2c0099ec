"""Serve ingress: the v1 API app on a Ray Serve deployment.

`build_app(args)` is the application builder used by `jitgate up` and by `configs/serve.yaml`;
args are `Settings` fields as JSON values.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import numpy as np
from ray import serve

from actors.domain.columns import Column
from cluster.app import create_app
from cluster.backends import RayBackends
from cluster.catalogs import load_catalogs, load_event_sources
from cluster.replica_state import current_replica_id, current_service, set_replica
from cluster.service import AccessService
from cluster.settings import Settings

logger = logging.getLogger("jitgate.cluster")

api = create_app(current_service, replica_id=current_replica_id)


class InReplicaDecisions:
    """Backends whose risk and policy calls run in this process; every other call goes to `remote`.

    The RiskScorer and PolicyActor classes are pure Python and numpy, so a replica can hold its
    own instances. A batch of decisions then costs no actor call, only the ledger write does.
    """

    def __init__(self, settings: Settings, remote: RayBackends) -> None:
        from actors.policy.actor import PolicyActor
        from actors.risk.actor import RiskScorer

        self._remote = remote
        self._scorer = RiskScorer(str(settings.risk_model_path))
        self._policies = [PolicyActor(str(settings.policy_dir), settings.max_duration_s, i) for i in range(settings.policy_shards)]

    def __getattr__(self, name: str):
        return getattr(self._remote, name)

    async def risk(self, method: str, *args):
        return await _maybe_await(getattr(self._scorer, method)(*args))

    async def policy(self, shard: int, method: str, *args):
        return await _maybe_await(getattr(self._policies[shard], method)(*args))

    def policy_cache_stats(self) -> dict[str, int]:
        stats = [policy.cache_stats() for policy in self._policies]
        return {name: sum(s[name] for s in stats) for name in ("hits", "misses", "size")}

    def clear_policy_caches(self, bundle_dir: str) -> None:
        for policy in self._policies:
            policy.load_bundle(bundle_dir)


async def _maybe_await(result):
    if asyncio.iscoroutine(result):
        return await result
    return result


@serve.deployment(
    name="ingress",
    health_check_period_s=1,
    health_check_timeout_s=5,
    graceful_shutdown_timeout_s=5,
    max_ongoing_requests=256,
)
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict) -> None:
        self.settings = Settings(**settings)
        directory, catalog, keyring = load_catalogs(self.settings)
        backends = RayBackends(self.settings)
        if self.settings.decisions_in_ingress:
            backends = InReplicaDecisions(self.settings, backends)
        self.service = AccessService(
            self.settings, backends, directory=directory, catalog=catalog, keyring=keyring,
            event_sources=load_event_sources(self.settings),
        )
        set_replica(self.service, serve.get_replica_context().replica_id.unique_id)
        asyncio.get_event_loop().create_task(self.service.start())
        # Keep the start-up objects (Ray, FastAPI, pydantic schemas, catalogs, models) out of
        # garbage collection, because full collections scan them all and batches of decisions
        # set one off every few calls. In one process with 270,000 such objects, freezing them
        # raised bulk decisions from about 24,000 to 34,000 rows per CPU second.
        gc.collect()
        gc.freeze()

    async def check_columns(self, principals: Column, resources: Column, roles: Column) -> dict[str, np.ndarray]:
        """Run many checks for in-cluster callers of a `DeploymentHandle`, without HTTP.

        Element i of each column is one check, as in `POST /v1/check:batch`. Pass each column
        packed (`actors.domain.columns.pack_column`), because Ray serializes one string faster
        than a list of strings. The caller is trusted code in the cluster, so the values are not
        validated again, but uneven columns raise `InvalidInput`. Returns `allowed` as a bool
        array and `expires_at_ms` as an int64 array.
        """
        allowed, expires_ms = await self.service.check_columns(principals, resources, roles)
        return {"allowed": allowed, "expires_at_ms": expires_ms}

    def policy_cache_stats(self) -> dict[str, int | str]:
        """Return this replica's id and the decision cache counters of its in-replica policy engines."""
        if not isinstance(self.service.backends, InReplicaDecisions):
            raise RuntimeError("policies run in the PolicyActor actors; read their cache_stats instead")
        return {"replica": serve.get_replica_context().replica_id.unique_id, **self.service.backends.policy_cache_stats()}

    def clear_policy_caches(self) -> str:
        """Empty the decision caches of this replica's in-replica policy engines; returns the replica id."""
        if not isinstance(self.service.backends, InReplicaDecisions):
            raise RuntimeError("policies run in the PolicyActor actors; call their load_bundle instead")
        self.service.backends.clear_policy_caches(str(self.settings.policy_dir))
        return serve.get_replica_context().replica_id.unique_id

    async def check_health(self) -> None:
        # Liveness of this replica only: a Redis outage must not make Serve replace every replica.
        return None


def build_app(args: dict) -> serve.Application:
    settings = Settings(**args)
    return Ingress.options(num_replicas=settings.ingress_replicas).bind(settings.model_dump(mode="json"))
