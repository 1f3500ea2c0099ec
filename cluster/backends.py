"""Calls from the ingress to the actors.

`RayBackends` routes to named, detached Ray actors (created on first use, restarted by Ray
when they die); `LocalBackends` calls the same classes in-process, for the baseline app and
for tests of the service logic. Both expose the same three coroutines.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import logging
from typing import Any

from actors.ledger import ledger_shard
from cluster.channel import CHANNEL_METHODS, Channel, ChannelLost, served
from cluster.settings import Settings
from jitgate.errors import JitError, Unavailable

logger = logging.getLogger("jitgate.cluster")

ACTOR_CALL_TIMEOUT_S = 30.0
# A placement group bundle must reserve some resource. Memory keeps the ledger actors out of the
# CPU accounting, where the Serve replicas already hold every CPU of a small head.
LEDGER_BUNDLE = {"memory": 16 * 1024 * 1024}
# A check waits this long for the shard's primary before the replica is asked instead.
READ_FAILOVER_S = 0.25
# A batch of submissions that the primary has not returned within this time is also sent to the
# replica. Each submission carries an idempotency key that the commit checks, so one of the two
# stores it and the other replays it. Other writes are not resent.
WRITE_FAILOVER_S = 0.5
# Actor class names, the keys of `CHANNEL_METHODS` and the `actor` label of the call counts.
LEDGER = "GrantLedger"
POLICY = "PolicyActor"
RISK = "RiskScorer"


def frozen_after_init(cls: type) -> type:
    """Return a subclass of `cls` that takes the objects alive after `__init__` out of garbage collection.

    An actor's process has a few hundred thousand objects from Ray and the libraries.
    A full collection scans them all and stalls whatever call is running, so the objects of
    start-up go to the permanent generation, as in the ingress replicas.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        gc.collect()
        gc.freeze()

    return type(cls.__name__, (cls,), {"__init__": __init__, "__doc__": cls.__doc__, "__module__": cls.__module__})


def policy_shard_of(resource: str, shards: int) -> int:
    import zlib

    return zlib.crc32(resource.encode()) % shards


def ledger_config(settings: Settings) -> dict[str, Any]:
    return {
        "redis_url": settings.redis_url,
        "review_window_s": settings.review_window_s,
        "target_redis_url": settings.target_redis_url,
    }


def actor_options(namespace: str) -> dict[str, Any]:
    """Return the Ray options of the named actors: detached, found by name if they exist, restarted forever."""
    return {
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": -1,
        "num_cpus": 0,
        "namespace": namespace,
    }


class RayBackends:
    def __init__(self, settings: Settings) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from actors.ledger.actor import GrantLedger
        from actors.policy.actor import PolicyActor
        from actors.risk.actor import RiskScorer

        self._ray = ray
        self.settings = settings
        common = actor_options(settings.namespace)
        self._common = common
        self._channels: dict[int, Channel] = {}
        # Calls per (actor class, transport), exported by /metrics.
        self.call_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._node_id = ray.get_runtime_context().get_node_id()
        self._ledger_class = ray.remote(frozen_after_init(served(GrantLedger)))
        self._placement_strategy = PlacementGroupSchedulingStrategy
        self.ledgers = [None] * settings.ledger_shards
        self.replicas = [None] * settings.ledger_shards
        for shard in range(settings.ledger_shards):
            self._create_shard(shard)
        self.policies = [
            ray.remote(frozen_after_init(served(PolicyActor)))
            .options(name=f"jitgate-policy-{i}", **common)
            .remote(str(settings.policy_dir), settings.max_duration_s, i)
            for i in range(settings.policy_shards)
        ]
        self.scorers = [
            ray.remote(frozen_after_init(served(RiskScorer))).options(name=f"jitgate-risk-{i}", **common).remote(str(settings.risk_model_path))
            for i in range(settings.risk_scorers)
        ]
        self._next_scorer = itertools.cycle(range(len(self.scorers)))

    def _create_shard(self, shard: int) -> None:
        """Get or create the primary and replica actors of a shard in the shard's placement group."""
        group = self._shard_placement_group(shard)
        # Odd shards put the primary in the second bundle, so primaries spread over the nodes too.
        primary_bundle = shard % 2
        for bundle, (name, role, handles) in (
            (primary_bundle, (f"jitgate-ledger-{shard}", "primary", self.ledgers)),
            (1 - primary_bundle, (f"jitgate-ledger-{shard}-replica", "replica", self.replicas)),
        ):
            placement = self._placement_strategy(placement_group=group, placement_group_bundle_index=bundle)
            handles[shard] = self._ledger_class.options(
                name=name, **self._common, memory=LEDGER_BUNDLE["memory"], scheduling_strategy=placement
            ).remote(shard, ledger_config(self.settings), role=role)

    def _shard_placement_group(self, shard: int) -> Any:
        """Get or create the detached placement group of a shard: one bundle each for primary and replica.

        Its SPREAD strategy puts the two bundles on different nodes when there are several, and
        Ray reschedules a bundle whose node died, so a restarted actor lands apart again.
        """
        from ray.util import get_placement_group, placement_group

        name = f"jitgate-ledger-{shard}-placement"
        try:
            return get_placement_group(name)
        except ValueError:
            pass
        try:
            return placement_group(
                [dict(LEDGER_BUNDLE), dict(LEDGER_BUNDLE)], strategy="SPREAD", name=name, lifetime="detached"
            )
        except (ValueError, self._ray.exceptions.RaySystemError) as error:
            # Another ingress replica created it first (Ray 2.60 raises RaySystemError for that).
            logger.info("placement group %s exists already (%s); using it", name, error)
            return get_placement_group(name)

    async def _call(self, handle: Any, kind: str, method: str, *args: Any) -> Any:
        """Call an actor method over its channel when one is connected, else through Ray.

        A call whose channel breaks is sent again through Ray, which waits for a restarting actor.
        Raises the actor's own `JitError` instead of Ray's wrapper.
        """
        if self.settings.actor_channels and method in CHANNEL_METHODS[kind]:
            channel = self._channels.get(id(handle))
            if channel is None or channel.handle is not handle:
                channel = self._channels[id(handle)] = Channel(handle, self._node_id, kind)
            if channel.connected:
                try:
                    result = await channel.call(method, *args)
                except ChannelLost:
                    logger.info("%s.%s: actor channel lost; sending the call through Ray", kind, method)
                    self.call_counts[kind, "channel_lost"] += 1
                else:
                    self.call_counts[kind, "channel"] += 1
                    return result
            channel.connect_soon()
        self.call_counts[kind, "ray"] += 1
        try:
            return await getattr(handle, method).remote(*args)
        except self._ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, JitError):
                raise error.cause from None
            if isinstance(error.cause, self._ray.exceptions.TaskCancelledError):
                raise error.cause from None
            raise

    async def _await(self, call: Any, label: str) -> Any:
        try:
            return await asyncio.wait_for(call, timeout=ACTOR_CALL_TIMEOUT_S)
        except (
            asyncio.TimeoutError,
            self._ray.exceptions.RayActorError,
            self._ray.exceptions.ActorUnavailableError,
            self._ray.exceptions.TaskCancelledError,
        ) as error:
            logger.warning("%s failed: %s", label, error)
            raise Unavailable(f"{label} is unavailable ({type(error).__name__}); retry shortly", retry_after_s=1) from error

    async def ledger(self, shard: int, method: str, *args: Any) -> Any:
        try:
            if method == "submit_many":
                return await self._submit_with_failover(shard, *args)
            return await self._await(self._call(self.ledgers[shard], LEDGER, method, *args), f"ledger shard {shard}")
        except Unavailable as error:
            if isinstance(error.__cause__, self._ray.exceptions.RayActorError) and not isinstance(
                error.__cause__, self._ray.exceptions.ActorUnavailableError
            ):
                # The actor is gone for good because its placement group was removed or Ray gave up
                # restarting it. Create the shard again, so the caller's retry reaches a new actor.
                logger.warning("ledger shard %d is gone (%s); creating it again", shard, error.__cause__)
                self._create_shard(shard)
            raise

    async def _submit_with_failover(self, shard: int, *args: Any) -> Any:
        """Store submissions through the primary, or through the replica when the primary is slow or restarting."""
        primary = self._call(self.ledgers[shard], LEDGER, "submit_many", *args)
        try:
            return await asyncio.wait_for(primary, timeout=WRITE_FAILOVER_S)
        except (asyncio.TimeoutError, self._ray.exceptions.RayActorError, self._ray.exceptions.ActorUnavailableError) as error:
            logger.warning("ledger shard %d primary did not respond to a submission (%r); sending it to the replica", shard, error)
            return await self._await(self._call(self.replicas[shard], LEDGER, "submit_many", *args), f"ledger replica {shard}")

    async def ledger_read(self, shard: int, method: str, *args: Any) -> Any:
        """Call a read-only method on the shard's primary, or on its replica when the primary times out."""
        primary = self._call(self.ledgers[shard], LEDGER, method, *args)
        try:
            return await asyncio.wait_for(primary, timeout=READ_FAILOVER_S)
        except (asyncio.TimeoutError, self._ray.exceptions.RayActorError, self._ray.exceptions.ActorUnavailableError):
            return await self._await(self._call(self.replicas[shard], LEDGER, method, *args), f"ledger replica {shard}")

    async def policy(self, shard: int, method: str, *args: Any) -> Any:
        return await self._await(self._call(self.policies[shard], POLICY, method, *args), f"policy shard {shard}")

    async def risk(self, method: str, *args: Any) -> Any:
        index = next(self._next_scorer)
        return await self._await(self._call(self.scorers[index], RISK, method, *args), f"risk scorer {index}")

    async def wait_ready(self) -> None:
        await asyncio.gather(*(self.ledger(i, "ready") for i in range(len(self.ledgers))))
        await asyncio.gather(*(self._await(self._call(r, LEDGER, "ready"), "ledger replica") for r in self.replicas))
        await asyncio.gather(*(self.policy(i, "version") for i in range(len(self.policies))))


class LocalBackends:
    """The same actor classes, called in-process (no Ray)."""

    def __init__(self, settings: Settings) -> None:
        from actors.ledger.actor import GrantLedger
        from actors.policy.actor import PolicyActor
        from actors.risk.actor import RiskScorer

        self.settings = settings
        self.ledgers = [GrantLedger(i, ledger_config(settings)) for i in range(settings.ledger_shards)]
        self.policies = [PolicyActor(str(settings.policy_dir), settings.max_duration_s, i) for i in range(settings.policy_shards)]
        self.scorers = [RiskScorer(str(settings.risk_model_path))]

    @staticmethod
    async def _call(target: Any, method: str, *args: Any) -> Any:
        result = getattr(target, method)(*args)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def ledger(self, shard: int, method: str, *args: Any) -> Any:
        return await self._call(self.ledgers[shard], method, *args)

    async def ledger_read(self, shard: int, method: str, *args: Any) -> Any:
        return await self._call(self.ledgers[shard], method, *args)

    async def policy(self, shard: int, method: str, *args: Any) -> Any:
        return await self._call(self.policies[shard], method, *args)

    async def risk(self, method: str, *args: Any) -> Any:
        return await self._call(self.scorers[0], method, *args)

    async def wait_ready(self) -> None:
        await asyncio.gather(*(ledger.ready() for ledger in self.ledgers))


__all__ = ["RayBackends", "LocalBackends", "ledger_shard", "policy_shard_of"]
