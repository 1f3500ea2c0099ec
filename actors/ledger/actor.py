"""GrantLedger actor: a thin async shell that persists plans, keeps the shard state and runs expiry.

Writes to Redis are serialized per shard because the audit chain is linear. A plan changes the
in-memory state only after Redis accepted it, so an acknowledged transition is always durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import weakref
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.domain.clock import Clock, SystemClock
from actors.domain.columns import Column, unpack_column
from actors.domain.lifecycle import GrantRecord, RequestRecord
from actors.ledger.grants import SYSTEM, plan_end, plan_extend, plan_removed
from actors.ledger.plan import Plan, idempotency_key, shard_key
from actors.ledger.redis_store import LedgerStore
from actors.ledger.requests import Submission, plan_cancel, plan_expire_request, plan_review, plan_submit
from actors.ledger.state import ShardState
from actors.provisioners import Provisioner, ProvisionerError, RecordProvisioner, RedisAclProvisioner
from jitgate.errors import Conflict, Forbidden, IdempotencyMismatch, JitError, NotFound, Unavailable
from jitgate.models import GrantState

logger = logging.getLogger("jitgate.ledger")

SECRET_KEY = "jg:provisioner-secret"
MAX_IDLE_WAIT_S = 1.0
REMOVE_BACKOFF_START_S = 0.05
REMOVE_BACKOFF_MAX_S = 10.0
MAX_HEAD_RETRIES = 3
# Seconds between a primary's instance id queries to each target. A changed id means a restart
# that may have lost the applied access.
TARGET_CHECK_INTERVAL_S = 1.0
# A slow target may not hold up a load or the watch loop longer than this.
TARGET_ID_TIMEOUT_S = 0.5


# A replica ends a grant only when the primary has not done so this long after the deadline.
# Both actors may race, and the version compare-and-set lets only one transition through. The grace
# only saves duplicate work, because a healthy primary ends a grant a few ms after its deadline.
REPLICA_GRACE_MS = 50
# Time limit of the first removal attempt at a deadline. A slower target is retried once the grant is revoking.
DEADLINE_REMOVE_TIMEOUT_S = 0.5
FOLLOW_BATCH = 500
FOLLOW_BLOCK_MS = 500
REDIS_SOCKET_TIMEOUT_S = 2.0
# Upper bound of one XREAD in the follow loop: its block, the socket timeout and 0.5 s of slack.
FOLLOW_READ_LIMIT_S = FOLLOW_BLOCK_MS / 1000 + REDIS_SOCKET_TIMEOUT_S + 0.5
# A replica waits this long after each read that returned entries, so that one read and one record
# load cover several commits. At 300 requests/s that halved the replicas' CPU per request. Its
# followed state lags by at most this much more, and an expiry takeover reads the grant from Redis.
REPLICA_FOLLOW_PAUSE_S = 0.02


class StaleState(Exception):
    """Redis has a newer audit chain head than this actor, so the shard is reloaded and planned again."""


class GrantLedger:
    def __init__(self, shard: int, config: dict[str, Any], clock: Clock | None = None, *, role: str = "primary") -> None:
        """Create a ledger actor of one shard.

        The "primary" role takes all writes. A "replica" follows the shard's audit stream, serves
        `check`, and ends a grant only when the primary missed its deadline by `REPLICA_GRACE_MS`.
        """
        if role not in ("primary", "replica"):
            raise ValueError(f"role must be 'primary' or 'replica', got {role!r}")
        self.role = role
        self.shard = shard
        self.review_window_s = int(config["review_window_s"])
        self.clock = clock or SystemClock()
        self.client = aioredis.Redis.from_url(
            config["redis_url"], socket_timeout=REDIS_SOCKET_TIMEOUT_S, socket_connect_timeout=2.0, health_check_interval=5
        )
        self.store = LedgerStore(self.client, shard)
        self.state = ShardState()
        self.head: str | None = None
        self.target_redis_url = config.get("target_redis_url")
        self.provisioners: dict[str, Provisioner] = {"record": RecordProvisioner()}
        self.counters = {
            "apply_retries_total": 0,
            "revoke_retries_total": 0,
            "grants_expired_total": 0,
            "grants_revoked_total": 0,
            "commits_total": 0,
        }
        self._write_lock = asyncio.Lock()
        self._principal_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._entitlement_locks: weakref.WeakValueDictionary[tuple, asyncio.Lock] = weakref.WeakValueDictionary()
        self._loaded = asyncio.Event()
        self._wake = asyncio.Event()
        self._removals: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._stream_position = "0-0"
        # Instance id of each target (by provisioner name) when this primary last applied its grants.
        self._target_ids: dict[str, str | None] = {}
        self._spawn(self._run())

    # ---- start-up -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay_s = 0.1
        while not self._loaded.is_set():
            _stop_if_cancelled()
            try:
                await self._load()
            except (Unavailable, OSError, RedisError) as error:
                logger.warning("ledger shard %d cannot load from Redis (%s); retrying in %.1f s", self.shard, error, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
        self._spawn(self._follow())
        if self.role == "primary":
            self._spawn(self._watch_targets())
        await self._expiry_loop()

    async def _load(self) -> None:
        secret = await self.client.set(SECRET_KEY, secrets.token_hex(32), nx=True)
        del secret
        secret_value = await self.client.get(SECRET_KEY)
        if self.target_redis_url:
            self.provisioners["redis-acl"] = RedisAclProvisioner(self.target_redis_url, secret_value)
        state = ShardState()
        # Read the stream position first: events committed during the load are followed again,
        # and the version check makes applying them twice harmless.
        self._stream_position = await self.store.stream_position()
        requests, grants = await self.store.load_open()
        for request in requests:
            state.put_request(request)
        for grant in grants:
            state.put_grant(grant)
        self.state = state
        self.head = await self.store.head()
        if self.role == "primary":
            # Taken before the grants below are applied, so a restart after this is noticed.
            self._target_ids = {name: await _instance_id(p) for name, p in self.provisioners.items()}
        self._loaded.set()
        logger.info(
            "ledger shard %d (%s) loaded %d pending requests and %d live grants", self.shard, self.role, len(requests),
            len(grants),
        )
        for grant in grants:
            if self.role != "primary":
                continue
            if grant.state is GrantState.ACTIVE and grant.expires_ms > self.clock.now_ms():
                self._spawn(self._apply_access(grant))
            elif grant.state is GrantState.REVOKING:
                self._start_removal(grant)
        self._wake.set()

    async def _follow(self) -> None:
        """Apply transitions that another ledger actor of this shard committed, from the audit stream."""
        while True:
            _stop_if_cancelled()
            try:
                # Bounded, because a blocking read whose cancellation redis-py mishandles can
                # otherwise wait for a reply that never comes.
                async with asyncio.timeout(FOLLOW_READ_LIMIT_S):
                    entries = await self.client.xread(
                        {shard_key(self.shard, "audit"): self._stream_position}, block=FOLLOW_BLOCK_MS, count=FOLLOW_BATCH
                    )
                for _, messages in entries or ():
                    await self._apply_events(messages)
                if entries and self.role != "primary":
                    await asyncio.sleep(REPLICA_FOLLOW_PAUSE_S)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, Unavailable) as error:
                logger.warning("ledger shard %d (%s) cannot follow its audit stream: %s", self.shard, self.role, error)
                await asyncio.sleep(0.2)

    async def _apply_events(self, messages: list) -> None:
        if self.role == "primary" and self._write_lock.locked():
            # The stream can deliver this actor's own commit before the commit's reply, while the
            # plan is not applied yet. Waiting for the commits in flight keeps their records from
            # being loaded from Redis as if another actor had written them.
            async with self._write_lock:
                pass
        unknown: dict[str, str] = {}
        for message_id, fields in messages:
            self._stream_position = message_id.decode() if isinstance(message_id, bytes) else message_id
            event = json.loads(fields[b"e"])
            version = int(event.get("data", {}).get("version", 0))
            if version == 0 or self.state.known_version(event["subject"]) < version:
                unknown[event["subject"]] = event["kind"]
        if not unknown:
            return
        records = await self.store.load_records(unknown)
        changed = False
        for kind, record in records:
            if kind == "request":
                self.state.put_request(record)
            else:
                before = self.state.grants.get(record.id)
                self.state.put_grant(record)
                changed = changed or before is None
        if changed:
            self._wake.set()

    async def ready(self) -> bool:
        await asyncio.wait_for(self._loaded.wait(), timeout=30)
        return True

    # ---- persistence ----------------------------------------------------------------------

    async def _persist(self, plan: Plan) -> str | None:
        """Commit a plan; returns the existing idempotency record when the key was taken meanwhile."""
        outcome = (await self._persist_many([plan]))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _persist_many(self, plans: list[Plan]) -> list[str | None | Exception]:
        """Commit plans in one pipeline; per plan None (done), the existing idempotency record, or an error.

        When a version or idempotency check rejects a plan, the head does not move, so the plans
        after it fail their head check. Those plans are sent again on the current head.
        """
        results: list[str | None | Exception] = [None] * len(plans)
        waiting = list(range(len(plans)))
        stale = False
        head_retries = 0
        async with self._write_lock:
            while waiting:
                if self.head is None:
                    self.head = await self.store.head()
                try:
                    outcomes, new_head = await self.store.commit_many([plans[i] for i in waiting], self.head)
                except Unavailable as error:
                    # The scripts may or may not have run: re-read the head before the next commit.
                    self.head = None
                    for i in waiting:
                        results[i] = error
                    return results
                self.head = new_head
                retry: list[int] = []
                # new_head is the head after the last accepted plan; a head rejection below replaces it.
                rejected = False
                for i, outcome in zip(waiting, outcomes):
                    if outcome.ok:
                        self.state.apply(plans[i])
                        self.counters["commits_total"] += 1
                    elif outcome.reason == "head" and rejected:
                        retry.append(i)
                    elif outcome.reason == "head" and head_retries < MAX_HEAD_RETRIES:
                        # Another actor of this shard (the replica or a former primary) wrote since
                        # our last commit. Adopt its head, because the version checks still guard
                        # every record.
                        head_retries += 1
                        self.head = outcome.detail
                        retry.append(i)
                        rejected = True
                    elif outcome.reason == "head":
                        stale = True
                        results[i] = StaleState(outcome.detail)
                        rejected = True
                    elif outcome.reason == "idem":
                        results[i] = outcome.detail
                        rejected = True
                    else:
                        results[i] = Conflict(f"the record changed concurrently ({outcome.detail}); reload it and retry")
                        rejected = True
                waiting = [] if stale else retry
                if stale:
                    for i in retry:
                        results[i] = StaleState("audit chain head moved")
        self._wake.set()
        if stale:
            await self._resync()
        return results

    async def _resync(self) -> None:
        logger.warning("ledger shard %d found a newer audit chain head in Redis; reloading the shard", self.shard)
        async with self._write_lock:
            self._loaded.clear()
            await self._load()

    async def _with_replan(self, operation):
        """Run a plan-and-persist operation, planning once more if the shard state was stale."""
        await self._loaded.wait()
        try:
            return await operation()
        except StaleState:
            return await operation()

    def _lock_for(self, table: weakref.WeakValueDictionary, key: Any) -> asyncio.Lock:
        lock = table.get(key)
        if lock is None:
            lock = asyncio.Lock()
            table[key] = lock
        return lock

    # ---- requests -------------------------------------------------------------------------

    async def submit(self, submission: dict[str, Any]) -> dict[str, Any]:
        result = (await self.submit_many([submission]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(self, submissions: list[dict[str, Any]]) -> list[dict[str, Any] | JitError]:
        """Store a batch of decided requests; per item the stored result or the error that refused it.

        Items of one principal go in successive rounds, so each is planned against the state the
        previous one left (an auto-approval is visible to the next request's active-grant check).
        """
        await self._loaded.wait()
        items = [Submission(**s) for s in submissions]
        results: list[dict[str, Any] | JitError | None] = [None] * len(items)
        waiting = list(range(len(items)))
        replans = 0
        while waiting:
            this_round, later, principals = [], [], set()
            for i in waiting:
                (later if items[i].principal in principals else this_round).append(i)
                principals.add(items[i].principal)
            stale = await self._submit_round(items, this_round, results)
            if stale and replans < 1:
                replans += 1
                later = stale + later
            else:
                for i in stale:
                    results[i] = Conflict("the ledger shard changed during the request; retry it")
            waiting = later
        return results

    async def _submit_round(self, items: list[Submission], indexes: list[int], results: list) -> list[int]:
        """Plan and persist one request per principal; returns the indexes to plan again."""
        locks = [self._lock_for(self._principal_locks, p) for p in sorted({items[i].principal for i in indexes})]
        for lock in locks:
            await lock.acquire()
        try:
            planned: list[tuple[int, Plan, RequestRecord, GrantRecord | None]] = []
            rejected: dict[int, JitError] = {}
            for i in indexes:
                try:
                    plan, request, grant = plan_submit(
                        self.state, items[i], shard=self.shard, now_ms=self.clock.now_ms(),
                        review_window_s=self.review_window_s,
                    )
                except JitError as error:
                    rejected[i] = error
                    continue
                planned.append((i, plan, request, grant))
            # The commit script rejects a planned item whose idempotency key is taken, so only
            # items that planning rejected need the lookup. Planning can reject a retry whose
            # first attempt was stored, because that attempt's grant is active. The retry then
            # gets the stored result instead of the error.
            existing = await self._stored_idempotent([i for i in rejected if items[i].idempotency_key is not None], items)
            for i, error in rejected.items():
                if i not in existing:
                    results[i] = error
            outcomes = await self._persist_many([plan for _, plan, _, _ in planned]) if planned else []
        finally:
            for lock in locks:
                lock.release()

        stale: list[int] = []
        granted: list[GrantRecord] = []
        for (i, _, request, grant), outcome in zip(planned, outcomes):
            if isinstance(outcome, StaleState):
                stale.append(i)
            elif isinstance(outcome, JitError):
                results[i] = outcome
            elif isinstance(outcome, str):
                existing[i] = outcome
            else:
                results[i] = {"request": request.to_dict(), "grant": grant.to_dict() if grant else None, "replayed": False}
                if grant is not None:
                    granted.append(grant)
        for i, value in existing.items():
            try:
                results[i] = await self._replay_idempotent(value, items[i])
            except JitError as error:
                results[i] = error
        if granted:
            await asyncio.gather(*(self._apply_access(grant) for grant in granted))
        return stale

    async def _stored_idempotent(self, indexes: list[int], items: list[Submission]) -> dict[int, str]:
        """Return the stored idempotency records of the items at `indexes` that have one."""
        if not indexes:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for i in indexes:
            pipe.get(idempotency_key(items[i].submitter, items[i].idempotency_key))
        values = await self.store._call(pipe.execute())
        return {i: value.decode() for i, value in zip(indexes, values) if value is not None}

    async def _replay_idempotent(self, existing: str, item: Submission) -> dict[str, Any]:
        request_id, _, body_sha256 = existing.partition(" ")
        if body_sha256 != item.body_sha256:
            raise IdempotencyMismatch(
                f"Idempotency-Key {item.idempotency_key!r} was used for request {request_id} with a different body; "
                "use a new key for a different request",
                request_id=request_id,
            )
        request = await self.store.load_request(request_id)
        if request is None:
            raise NotFound(f"request {request_id} of Idempotency-Key {item.idempotency_key!r} is missing")
        grant = await self.store.load_grant(request.grant_id) if request.grant_id else None
        return {"request": request.to_dict(), "grant": grant.to_dict() if grant else None, "replayed": True}

    async def _open_request(self, request_id: str) -> RequestRecord:
        request = self.state.pending.get(request_id) or await self.store.load_request(request_id)
        if request is None:
            raise NotFound(f"request {request_id} not found", request_id=request_id)
        return request

    async def review(self, request_id: str, reviewer: str, decision: str, reason: str, duration_s: int | None,
                     current_policy_version: str, provisioner: str, key_id: str) -> dict[str, Any]:
        async def operation() -> dict[str, Any]:
            request = await self._open_request(request_id)
            async with self._lock_for(self._principal_locks, request.principal):
                request = await self._open_request(request_id)
                plan, moved, grant = plan_review(
                    request, shard=self.shard, reviewer=reviewer, decision=decision, reason=reason,
                    duration_s=duration_s, current_policy_version=current_policy_version, provisioner=provisioner,
                    now_ms=self.clock.now_ms(), key_id=key_id,
                )
                await self._persist(plan)
            if grant is not None:
                await self._apply_access(grant)
            return {"request": moved.to_dict(), "grant": grant.to_dict() if grant else None}

        return await self._with_replan(operation)

    async def cancel(self, request_id: str, actor: str, is_admin: bool, reason: str, key_id: str) -> dict[str, Any]:
        async def operation() -> dict[str, Any]:
            request = await self._open_request(request_id)
            async with self._lock_for(self._principal_locks, request.principal):
                request = await self._open_request(request_id)
                plan, moved = plan_cancel(
                    request, shard=self.shard, actor=actor, is_admin=is_admin, reason=reason,
                    now_ms=self.clock.now_ms(), key_id=key_id,
                )
                await self._persist(plan)
            return moved.to_dict()

        return await self._with_replan(operation)

    # ---- grants ---------------------------------------------------------------------------

    async def _live_grant(self, grant_id: str) -> GrantRecord:
        grant = self.state.grants.get(grant_id) or await self.store.load_grant(grant_id)
        if grant is None:
            raise NotFound(f"grant {grant_id} not found", grant_id=grant_id)
        return grant

    async def revoke(self, grant_id: str, actor: str, reason: str, key_id: str) -> dict[str, Any]:
        async def operation() -> dict[str, Any]:
            grant = await self._live_grant(grant_id)
            async with self._lock_for(self._principal_locks, grant.principal):
                grant = await self._live_grant(grant_id)
                plan, moved = plan_end(grant, "revoke", shard=self.shard, now_ms=self.clock.now_ms(), actor=actor, key_id=key_id, reason=reason)
                await self._persist(plan)
            self._start_removal(moved)
            return moved.to_dict()

        return await self._with_replan(operation)

    async def extend(self, grant_id: str, duration_s: int, actor: str, reason: str, key_id: str) -> dict[str, Any]:
        async def operation() -> dict[str, Any]:
            grant = await self._live_grant(grant_id)
            async with self._lock_for(self._principal_locks, grant.principal):
                grant = await self._live_grant(grant_id)
                plan, moved = plan_extend(
                    grant, shard=self.shard, duration_s=duration_s, now_ms=self.clock.now_ms(), actor=actor,
                    key_id=key_id, reason=reason,
                )
                await self._persist(plan)
            return moved.to_dict()

        return await self._with_replan(operation)

    async def check(self, principal: str, resource: str, role: str) -> dict[str, Any]:
        await self._loaded.wait()
        grant = self.state.active_grant((principal, resource, role), self.clock.now_ms())
        if grant is None:
            return {"allowed": False, "grant_id": None, "expires_ms": None}
        return {"allowed": True, "grant_id": grant.id, "expires_ms": grant.expires_ms}

    async def check_entitlements(self, keys: Column) -> np.ndarray:
        """Return the expires_ms of the active grant of each entitlement key as an int64 array, 0 where there is none.

        `keys` is a packed column or a list of `actors.domain.columns.entitlement_keys` keys of
        canonical entitlements. A grant whose expires_ms is not after this actor's clock counts as none.
        """
        await self._loaded.wait()
        return self.state.active_expiries(unpack_column(keys, "keys"), self.clock.now_ms())

    async def credentials(self, grant_id: str, caller: str) -> dict[str, str]:
        grant = await self._live_grant(grant_id)
        if caller != grant.principal:
            raise Forbidden(f"only {grant.principal} can fetch the credentials of grant {grant_id}", grant_id=grant_id)
        if grant.state is not GrantState.ACTIVE or grant.expires_ms <= self.clock.now_ms():
            raise Conflict(f"grant {grant_id} is no longer active", grant_id=grant_id)
        provisioner = self.provisioners.get(grant.provisioner)
        found = provisioner.credentials(*grant.entitlement) if provisioner else None
        if found is None:
            raise NotFound(f"grant {grant_id} uses provisioner {grant.provisioner}, which has no credentials", grant_id=grant_id)
        return found

    async def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "shard": self.shard,
            "pending_requests": len(self.state.pending),
            "active_grants": sum(1 for g in self.state.grants.values() if g.state is GrantState.ACTIVE),
            "revoking_grants": len(self.state.revoking()),
            "loaded": self._loaded.is_set(),
        }

    # ---- provisioning and expiry ----------------------------------------------------------

    async def _watch_targets(self) -> None:
        """Apply the access of every active grant again on a target whose instance id changed.

        A restarted target may have lost what was applied before: Redis keeps ACL users in
        memory only, unless it saves them to an ACL file. Applying is idempotent.
        """
        while True:
            _stop_if_cancelled()
            await asyncio.sleep(TARGET_CHECK_INTERVAL_S)
            for name, provisioner in list(self.provisioners.items()):
                try:
                    self._reapply_if_restarted(name, await _instance_id(provisioner))
                except Exception as error:  # noqa: BLE001 - one failed check must not end the watch
                    logger.warning(
                        "ledger shard %d: checking the target of provisioner %s failed (%r); checking again in %.0f s",
                        self.shard, name, error, TARGET_CHECK_INTERVAL_S,
                    )

    def _reapply_if_restarted(self, name: str, current: str | None) -> None:
        if current is None:
            return
        previous = self._target_ids.get(name)
        self._target_ids[name] = current
        if previous is None or previous == current:
            return
        grants = [g for g in self.state.grants.values() if g.state is GrantState.ACTIVE and g.provisioner == name]
        logger.warning(
            "ledger shard %d: target of provisioner %s restarted (instance %s, was %s); applying %d active grants again",
            self.shard, name, current, previous, len(grants),
        )
        for grant in grants:
            self._spawn(self._apply_access(grant))

    async def _apply_access(self, grant: GrantRecord) -> None:
        """Apply the access once; when the target rejects it, keep retrying in the background."""
        if not await self._try_apply(grant):
            self._spawn(self._retry_apply(grant))

    async def _try_apply(self, grant: GrantRecord) -> bool:
        """Apply the access of a live grant; returns False when the target rejected it."""
        provisioner = self.provisioners.get(grant.provisioner)
        if provisioner is None:
            logger.error("grant %s names unknown provisioner %s; no access was applied", grant.id, grant.provisioner)
            return True
        async with self._lock_for(self._entitlement_locks, grant.entitlement):
            live = self.state.grants.get(grant.id)
            if live is None or live.state is not GrantState.ACTIVE:
                return True
            try:
                await provisioner.apply(*grant.entitlement)
            except ProvisionerError as error:
                self.counters["apply_retries_total"] += 1
                logger.warning("applying grant %s failed (%s); retrying in the background", grant.id, error)
                return False
        return True

    async def _retry_apply(self, grant: GrantRecord) -> None:
        backoff_s = REMOVE_BACKOFF_START_S
        while not await self._try_apply(grant):
            _stop_if_cancelled()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, REMOVE_BACKOFF_MAX_S)

    def _start_removal(self, grant: GrantRecord, *, took_over: bool = False) -> None:
        """Start removing access; `took_over` means this replica already waited out the primary."""
        if grant.id not in self._removals:
            self._removals.add(grant.id)
            self._spawn(self._finish_removal(grant.id, took_over))

    async def _finish_removal(self, grant_id: str, took_over: bool = False) -> None:
        """Remove the access with backoff until the target accepts, then record expired or revoked."""
        backoff_s = REMOVE_BACKOFF_START_S
        try:
            if self.role == "replica" and not took_over and not await self._take_over_if_missed(grant_id, GrantState.REVOKING):
                return
            while True:
                _stop_if_cancelled()
                grant = self.state.grants.get(grant_id)
                if grant is None or grant.state is not GrantState.REVOKING:
                    return
                try:
                    await self._remove_access(grant)
                    plan, moved = plan_removed(grant, shard=self.shard, now_ms=self.clock.now_ms(), message="access removed")
                    await self._persist(plan)
                    self.counters["grants_expired_total" if moved.state is GrantState.EXPIRED else "grants_revoked_total"] += 1
                    return
                except ProvisionerError as error:
                    self.counters["revoke_retries_total"] += 1
                    logger.warning("removing grant %s failed (%s); retrying in %.2f s", grant_id, error, backoff_s)
                except (Unavailable, StaleState, Conflict) as error:
                    logger.warning("recording removal of grant %s failed (%s); retrying in %.2f s", grant_id, error, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, REMOVE_BACKOFF_MAX_S)
        finally:
            self._removals.discard(grant_id)

    async def _take_over_if_missed(self, grant_id: str, state: GrantState) -> bool:
        """On a replica: wait out the grace period, then report whether the grant is still in `state`."""
        await asyncio.sleep(REPLICA_GRACE_MS / 1000)
        fresh = await self.store.load_grant(grant_id)
        if fresh is None:
            return False
        self.state.put_grant(fresh)
        if fresh.state is not state:
            return False
        logger.warning("replica of ledger shard %d takes over grant %s (%s): the primary is late", self.shard, grant_id, state.value)
        return True

    async def _expire_grant(self, grant: GrantRecord) -> None:
        if self.role == "replica":
            try:
                if not await self._take_over_if_missed(grant.id, GrantState.ACTIVE):
                    return
            except Unavailable as error:
                logger.warning("replica cannot read grant %s (%s); retrying", grant.id, error)
                self._retry_expiry(grant)
                return
        try:
            async with self._lock_for(self._principal_locks, grant.principal):
                live = self.state.grants.get(grant.id)
                if live is None or live.state is not GrantState.ACTIVE or live.expires_ms > self.clock.now_ms():
                    return
                await self._remove_at_deadline(live)
                plan, moved = plan_end(live, "deadline", shard=self.shard, now_ms=self.clock.now_ms(), actor=SYSTEM, key_id=SYSTEM, reason="deadline reached")
                await self._persist(plan)
        except Conflict as error:
            # Another actor of the shard ended it first; the stream brings its transition.
            logger.info("grant %s was ended by another actor of shard %d (%s)", grant.id, self.shard, error)
            return
        except (Unavailable, StaleState) as error:
            logger.warning("expiring grant %s failed (%s); retrying", grant.id, error)
            await asyncio.sleep(0.1)
            self._retry_expiry(grant)
            return
        self._start_removal(moved, took_over=self.role == "replica")

    async def _remove_at_deadline(self, grant: GrantRecord) -> None:
        """Try once to remove the access of a grant at its deadline, before the revoking transition is stored.

        The access must be gone at the deadline, and storing the transition first would add a
        Redis round trip before it. A crash before that transition leaves the grant active past
        its deadline, so it is ended again on load; removal is idempotent. A failure here is left
        to `_finish_removal`, which retries with backoff.
        """
        try:
            await asyncio.wait_for(self._remove_access(grant), DEADLINE_REMOVE_TIMEOUT_S)
        except (ProvisionerError, asyncio.TimeoutError) as error:
            logger.info("removing grant %s at its deadline failed (%r); retrying after the transition", grant.id, error)

    async def _remove_access(self, grant: GrantRecord) -> None:
        """Remove the access of `grant` unless another active grant has the same entitlement."""
        async with self._lock_for(self._entitlement_locks, grant.entitlement):
            if not self.state.has_other_active(grant.entitlement, grant.id):
                await self.provisioners.get(grant.provisioner, RecordProvisioner()).remove(*grant.entitlement)

    def _retry_expiry(self, grant: GrantRecord) -> None:
        live = self.state.grants.get(grant.id)
        if live is not None and live.state is GrantState.ACTIVE:
            self.state.requeue_expiry(live)
        self._wake.set()

    async def _expire_request(self, request: RequestRecord) -> None:
        try:
            async with self._lock_for(self._principal_locks, request.principal):
                live = self.state.pending.get(request.id)
                if live is None:
                    return
                plan, _ = plan_expire_request(live, shard=self.shard, now_ms=self.clock.now_ms())
                await self._persist(plan)
        except (Unavailable, StaleState, Conflict) as error:
            logger.warning("expiring request %s failed (%s); retrying", request.id, error)
            await asyncio.sleep(0.1)
            if request.id in self.state.pending:
                self.state.put_request(self.state.pending[request.id])
            self._wake.set()

    async def _expiry_loop(self) -> None:
        while True:
            _stop_if_cancelled()
            # Cleared before the scan, so a deadline added during the scan wakes the next wait.
            self._wake.clear()
            now_ms = self.clock.now_ms()
            for grant in self.state.due_grants(now_ms):
                self._spawn(self._expire_grant(grant))
            for request in self.state.due_requests(now_ms):
                if self.role == "primary":
                    self._spawn(self._expire_request(request))
            next_ms = self.state.next_deadline_ms()
            wait_s = MAX_IDLE_WAIT_S if next_ms is None else min(MAX_IDLE_WAIT_S, max(0.0, (next_ms - now_ms) / 1000))
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation
            # that arrives as the wait ends, and the loop then never stops.
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _instance_id(provisioner: Provisioner) -> str | None:
    try:
        return await asyncio.wait_for(provisioner.instance_id(), TARGET_ID_TIMEOUT_S)
    except asyncio.TimeoutError:
        return None


def _stop_if_cancelled() -> None:
    """Raise CancelledError when the current task has been asked to stop.

    The ledger's loops retry on Redis and provisioner errors. A library may turn the
    CancelledError of an await into an error of its own, or swallow it, as `wait_for` can in
    Python 3.11. Such a loop would then keep running after its task was cancelled, and a
    shutdown would wait for it forever. `Task.cancelling()` still counts the request.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
