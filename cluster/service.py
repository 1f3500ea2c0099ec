"""Use cases behind the v1 API, independent of the web framework and of Ray.

The ingress authenticates the caller, validates the body and calls one method here. Every
method raises `jitgate.errors` when it rejects a call, and returns plain dicts in the API's shapes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from pydantic import ValidationError

from actors.domain.audit import canonical_json
from actors.domain.clock import Clock, SystemClock, hour_utc
from actors.domain.columns import Column
from actors.domain.directory import ApiKey, ApiKeyRing, PrincipalDirectory, ResourceCatalog
from actors.domain.durations import validate_requested_duration
from actors.domain.ids import new_request_id
from actors.ledger import ledger_shard
from actors.ledger.plan import INVALIDATION_CHANNEL
from actors.ledger.redis_store import unavailable
from actors.provisioners.redis_acl import RedisAclProvisioner, key_prefix
from cluster.backends import policy_shard_of
from cluster.batch_checks import BatchChecks
from cluster.batching import AdaptiveBatcher
from cluster.check_cache import CheckCache
from cluster.decisions import DecisionItem, decide_batch
from cluster.events import EventSource, map_event, verify
from cluster.reads import RedisReader
from cluster.settings import Settings
from cluster.views import grant_view, request_view, result_view
from jitgate.errors import Forbidden, IdempotencyMismatch, InvalidInput, NotFound, Unauthenticated
from jitgate.models import (
    AccessRequestCreate,
    CheckBatchBody,
    CheckBody,
    DecisionBatchBody,
    DevicePosture,
    ExtendBody,
    ReviewCreate,
    RevokeBody,
)

logger = logging.getLogger("jitgate.cluster")

# Enum members to their values, because `Enum.value` is a slow property for a per-row lookup.
DEVICE_POSTURE_VALUES = {posture: posture.value for posture in DevicePosture}

ALL_ENTITLEMENTS = "*"


class AccessService:
    def __init__(
        self, settings: Settings, backends: Any, *, directory: PrincipalDirectory, catalog: ResourceCatalog,
        keyring: ApiKeyRing, clock: Clock | None = None, event_sources: dict[str, EventSource] | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.directory = directory
        self.catalog = catalog
        self.keyring = keyring
        self.clock = clock or SystemClock()
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.reader = RedisReader(self.redis, ledger_shards=settings.ledger_shards)
        self.cache = CheckCache(settings.check_cache_ttl_ms)
        self.batch_checks = BatchChecks(backends, directory, settings.ledger_shards, self.clock.now_ms, self.cache)
        self.event_sources = event_sources or {}
        self._decisions = AdaptiveBatcher(self._decide_items, max_batch=1024, max_in_flight=2)
        self._submitters = [
            AdaptiveBatcher(self._submit_batch_to(shard), max_batch=512, max_in_flight=2)
            for shard in range(settings.ledger_shards)
        ]
        self._listener: asyncio.Task | None = None

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_for_invalidations())

    async def _listen_for_invalidations(self) -> None:
        """Apply cache invalidations published by the ledgers; without a subscription, cache nothing."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(INVALIDATION_CHANNEL)
                self.cache.clear()
                self.cache.enabled = self.settings.check_cache_ttl_ms > 0
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    member = message["data"].decode()
                    if member == ALL_ENTITLEMENTS:
                        self.cache.clear()
                    else:
                        principal, resource, role = member.split("\x1f")
                        self.cache.invalidate((principal, resource, role))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure ends the subscription; we resubscribe
                logger.warning("check cache invalidation stream lost (%s); caching off until resubscribed", error)
            self.cache.enabled = False
            self.cache.clear()
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
            await asyncio.sleep(0.5)

    async def ready(self) -> bool:
        try:
            await self.redis.ping()
        except Exception as error:  # noqa: BLE001 - any Redis failure means not ready
            raise unavailable(error) from error
        await self.backends.wait_ready()
        return True

    # ---- identity -----------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> ApiKey:
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, raw = authorization.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
        key = self.keyring.lookup(raw.strip())
        if key is None:
            raise Unauthenticated("unknown API key")
        return key

    def canonical(self, name: str) -> str:
        return self.directory.canonical(name)

    @staticmethod
    def require_scope(caller: ApiKey, scope: str) -> None:
        if scope not in caller.scopes and "admin" not in caller.scopes:
            raise Forbidden(f"API key {caller.key_id} lacks the '{scope}' scope", scope=scope, key_id=caller.key_id)

    # ---- decisions ----------------------------------------------------------------------

    def _decision_item(self, principal: str, attributes: dict[str, Any], resource: str, role: str, duration_s: int,
                       context: dict[str, Any], now_ms: int, *, field: str = "resource") -> DecisionItem:
        entry = self.catalog.lookup(resource)
        if entry.provisioner == RedisAclProvisioner.name:
            try:
                key_prefix(resource)
            except ValueError as error:
                raise InvalidInput(str(error), field=field, value=resource[:200]) from None
        return DecisionItem(
            principal=principal, principal_attributes=attributes, resource=resource,
            resource_entry=entry, role=role, duration_s=duration_s,
            device_posture=context.get("device_posture") or "unknown",
            hour_utc=context["hour_utc"] if context.get("hour_utc") is not None else hour_utc(now_ms),
            source=context.get("source") or "api", now_ms=now_ms,
        )

    async def _decide_items(self, items: list[DecisionItem]) -> list[dict[str, Any]]:
        return await decide_batch(self.backends, items, self.settings.policy_shards)

    def _principal_attributes(self, caller: ApiKey, principal: str, supplied: dict[str, str] | None) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        if supplied:
            self.require_scope(caller, "submit_for_others")
            attributes.update(supplied)
        attributes.update(self.directory.attributes(principal))
        return attributes

    # ---- requests -----------------------------------------------------------------------

    async def submit(self, caller: ApiKey, body: AccessRequestCreate, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """Decide and store an access request; returns (result, replayed)."""
        self.require_scope(caller, "request")
        validate_requested_duration(body.duration_s, self.settings.max_duration_s)
        submitter = self.canonical(caller.principal)
        principal = self.canonical(body.principal) if body.principal else submitter
        if principal != submitter:
            self.require_scope(caller, "submit_for_others")
        body_sha256 = hashlib.sha256(canonical_json(body.model_dump(mode="json")).encode()).hexdigest()
        if idempotency_key is not None:
            replayed = await self.reader.idempotent_result(submitter, idempotency_key)
            if replayed is not None:
                return self._replay(replayed, idempotency_key, body_sha256), True

        now_ms = self.clock.now_ms()
        context = body.context.model_dump(mode="json")
        attributes = self._principal_attributes(caller, principal, body.principal_attributes)
        item = self._decision_item(principal, attributes, body.resource, body.role, body.duration_s, context, now_ms)
        decision = await self._decisions.submit(item)
        submission = {
            "request_id": new_request_id(now_ms),
            "submitter": submitter,
            "principal": principal,
            "resource": body.resource,
            "role": body.role,
            "duration_s": body.duration_s,
            "reason": body.reason,
            "context": context,
            "decision": decision,
            "provisioner": item.resource_entry.provisioner,
            # Without a client key the ledger still deduplicates retries of this one call.
            "idempotency_key": idempotency_key or f"auto-{uuid.uuid4()}",
            "body_sha256": body_sha256,
            "key_id": caller.key_id,
        }
        stored = await self._submitters[ledger_shard(principal, self.settings.ledger_shards)].submit(submission)
        return result_view(stored["request"], stored["grant"]), stored["replayed"]

    def _submit_batch_to(self, shard: int):
        async def submit_batch(submissions: list[dict[str, Any]]) -> list[Any]:
            return await self.backends.ledger(shard, "submit_many", submissions)

        return submit_batch

    async def submit_event(self, source_name: str, *, timestamp: str | None, signature: str | None,
                           body: bytes) -> tuple[dict[str, Any], bool]:
        """Verify a signed webhook and submit the access request it describes, as `source:<name>`."""
        source = verify(self.event_sources.get(source_name), source_name, timestamp=timestamp, signature=signature,
                        body=body, now_s=self.clock.now_ms() / 1000)
        try:
            payload = json.loads(body)
        except ValueError as error:
            raise InvalidInput(f"event body is not valid JSON: {error}", field="body") from None
        fields = map_event(source, payload)
        delivery_id = str(fields.pop("delivery_id", "")) or hashlib.sha256(body).hexdigest()
        ticket = fields.pop("ticket", None)
        try:
            request = AccessRequestCreate(
                **fields, context={"source": source_name, "ticket": str(ticket)[:128] if ticket is not None else None}
            )
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"event field {field}: {first['msg']} (got {first.get('input')!r:.100})", field=field) from None
        caller = ApiKey(key_id=f"source:{source_name}", principal=f"source:{source_name}",
                        scopes=frozenset({"request", "submit_for_others"}), sha256="")
        return await self.submit(caller, request, f"event-{delivery_id}"[:128])

    @staticmethod
    def _replay(stored: dict[str, Any], idempotency_key: str, body_sha256: str) -> dict[str, Any]:
        request, grant, stored_sha256 = stored["request"], stored["grant"], stored["body_sha256"]
        if stored_sha256 != body_sha256:
            raise IdempotencyMismatch(
                f"Idempotency-Key {idempotency_key!r} was used for request {request['id']} with a different body; "
                "use a new key for a different request",
                request_id=request["id"],
            )
        return result_view(request, grant)

    async def _load_request(self, request_id: str) -> dict[str, Any]:
        record = await self.reader.request(request_id)
        if record is None:
            raise NotFound(f"request {request_id} not found", request_id=request_id)
        return record

    async def get_request(self, caller: ApiKey, request_id: str) -> dict[str, Any]:
        return request_view(await self._load_request(request_id))

    async def list_requests(self, caller: ApiKey, *, state: str | None, principal: str | None, reviewer: str | None,
                            limit: int, after: str | None) -> dict[str, Any]:
        records, cursor = await self.reader.list_requests(
            state=state, principal=self.canonical(principal) if principal else None,
            reviewer=self.canonical(reviewer) if reviewer else None, limit=limit, after=after,
        )
        return {"items": [request_view(r) for r in records], "next": cursor}

    async def review(self, caller: ApiKey, request_id: str, body: ReviewCreate) -> dict[str, Any]:
        self.require_scope(caller, "review")
        reviewer = self.canonical(caller.principal)
        request = await self._load_request(request_id)
        if reviewer in (request["principal"], request["submitter"]):
            role = "principal" if reviewer == request["principal"] else "submitter"
            raise Forbidden(f"{reviewer} is the {role} of request {request_id} and cannot review it", request_id=request_id)
        item = self._decision_item(
            request["principal"], self.directory.attributes(request["principal"]), request["resource"], request["role"],
            request["duration_s"], request["context"], self.clock.now_ms(),
        )
        shard = policy_shard_of(request["resource"], self.settings.policy_shards)
        eligibility = await self.backends.policy(
            shard, "may_review", reviewer, self.directory.attributes(reviewer), item.policy_input(request["decision"]["risk_score"])
        )
        if not eligibility["eligible"]:
            reasons = "; ".join(eligibility.get("reasons", ())) or "no policy permits it"
            raise Forbidden(f"{reviewer} may not review request {request_id}: {reasons}", request_id=request_id)
        stored = await self.backends.ledger(
            ledger_shard(request["principal"], self.settings.ledger_shards), "review", request_id, reviewer,
            body.decision, body.reason, body.duration_s, eligibility["policy_version"],
            item.resource_entry.provisioner, caller.key_id,
        )
        return result_view(stored["request"], stored["grant"])

    async def cancel(self, caller: ApiKey, request_id: str, reason: str | None) -> dict[str, Any]:
        request = await self._load_request(request_id)
        actor = self.canonical(caller.principal)
        record = await self.backends.ledger(
            ledger_shard(request["principal"], self.settings.ledger_shards), "cancel", request_id, actor,
            "admin" in caller.scopes, reason or "cancelled", caller.key_id,
        )
        return request_view(record)

    # ---- grants -------------------------------------------------------------------------

    async def _load_grant(self, grant_id: str) -> dict[str, Any]:
        record = await self.reader.grant(grant_id)
        if record is None:
            raise NotFound(f"grant {grant_id} not found", grant_id=grant_id)
        return record

    async def get_grant(self, caller: ApiKey, grant_id: str) -> dict[str, Any]:
        return grant_view(await self._load_grant(grant_id))

    async def list_grants(self, caller: ApiKey, *, principal: str | None, active: bool | None, limit: int,
                          after: str | None) -> dict[str, Any]:
        records, cursor = await self.reader.list_grants(
            principal=self.canonical(principal) if principal else None, active=active, limit=limit, after=after
        )
        return {"items": [grant_view(r) for r in records], "next": cursor}

    async def revoke(self, caller: ApiKey, grant_id: str, body: RevokeBody) -> dict[str, Any]:
        grant = await self._load_grant(grant_id)
        actor = self.canonical(caller.principal)
        if actor != grant["principal"] and "admin" not in caller.scopes and "review" not in caller.scopes:
            raise Forbidden(f"{actor} may not revoke grant {grant_id}: it needs the principal, or the review or admin scope", grant_id=grant_id)
        record = await self.backends.ledger(
            ledger_shard(grant["principal"], self.settings.ledger_shards), "revoke", grant_id, actor, body.reason, caller.key_id
        )
        return grant_view(record)

    async def extend(self, caller: ApiKey, grant_id: str, body: ExtendBody) -> dict[str, Any]:
        """Extend a grant after a fresh decision; only an `allow` extends, anything else is refused."""
        self.require_scope(caller, "request")
        validate_requested_duration(body.duration_s, self.settings.max_duration_s)
        grant = await self._load_grant(grant_id)
        actor = self.canonical(caller.principal)
        if actor != grant["principal"] and "submit_for_others" not in caller.scopes and "admin" not in caller.scopes:
            raise Forbidden(f"{actor} may not extend grant {grant_id} of {grant['principal']}", grant_id=grant_id)
        now_ms = self.clock.now_ms()
        item = self._decision_item(
            grant["principal"], self.directory.attributes(grant["principal"]), grant["resource"], grant["role"],
            body.duration_s, {**body.context.model_dump(mode="json"), "source": "extend"}, now_ms,
        )
        decision = await self._decisions.submit(item)
        if decision["effect"] != "allow":
            reasons = "; ".join(decision["reasons"]) or decision["effect"]
            # NOTE: an extension that needs review is refused; the principal files a new request after expiry.
            raise Forbidden(f"extension of grant {grant_id} was not approved automatically ({decision['effect']}): {reasons}", grant_id=grant_id, effect=decision["effect"])
        record = await self.backends.ledger(
            ledger_shard(grant["principal"], self.settings.ledger_shards), "extend", grant_id, body.duration_s, actor,
            body.reason, caller.key_id,
        )
        return grant_view(record)

    async def credentials(self, caller: ApiKey, grant_id: str) -> dict[str, str]:
        grant = await self._load_grant(grant_id)
        return await self.backends.ledger(
            ledger_shard(grant["principal"], self.settings.ledger_shards), "credentials", grant_id, self.canonical(caller.principal)
        )

    # ---- checks -------------------------------------------------------------------------

    async def check(self, caller: ApiKey, body: CheckBody) -> dict[str, Any]:
        key = (self.canonical(body.principal), body.resource, body.role)
        now_ms = self.clock.now_ms()
        cached = self.cache.get(key, now_ms)
        if cached is not None:
            return self._check_view(cached.allowed, cached.grant_id, cached.expires_ms)
        generation = self.cache.generation
        found = await self.backends.ledger_read(ledger_shard(key[0], self.settings.ledger_shards), "check", *key)
        self.cache.put(key, allowed=found["allowed"], grant_id=found["grant_id"], expires_ms=found["expires_ms"],
                       now_ms=now_ms, generation=generation)
        return self._check_view(found["allowed"], found["grant_id"], found["expires_ms"])

    @staticmethod
    def _check_view(allowed: bool, grant_id: str | None, expires_ms: int | None) -> dict[str, Any]:
        from actors.domain.clock import to_iso

        return {"allowed": allowed, "grant_id": grant_id, "expires_at": to_iso(expires_ms)}

    async def check_batch(self, caller: ApiKey, body: CheckBatchBody) -> dict[str, Any]:
        allowed, expires_ms = await self.check_columns(body.principals, body.resources, body.roles)
        return {"allowed": allowed.tolist(), "expires_at_ms": expires_ms.tolist()}

    async def check_columns(self, principals: Column, resources: Column, roles: Column) -> tuple[np.ndarray, np.ndarray]:
        """Check many (principal, resource, role) triples: from the check cache, the rest in one call per ledger shard.

        Element i of each column is one check, and a column is a list or a packed column
        (`actors.domain.columns`). Returns `allowed` as a bool array and `expires_at_ms` as an
        int64 array, 0 where the ledger found no active grant.
        """
        return await self.batch_checks.check(principals, resources, roles)

    async def decide_many(self, caller: ApiKey, body: DecisionBatchBody) -> dict[str, Any]:
        self.require_scope(caller, "request")
        now_ms = self.clock.now_ms()
        submitter = self.canonical(caller.principal)
        max_duration_s = self.settings.max_duration_s
        items = []
        for index, entry in enumerate(body.requests):
            duration_s = entry.duration_s
            if type(duration_s) is not int or not 0 < duration_s <= max_duration_s:
                validate_requested_duration(duration_s, max_duration_s, field=f"requests[{index}].duration_s")
            principal = self.canonical(entry.principal)
            if principal != submitter or entry.principal_attributes:
                self.require_scope(caller, "submit_for_others")
            attributes = dict(entry.principal_attributes or {})
            attributes.update(self.directory.attributes(principal))
            # The fields `_decision_item` reads, without a pydantic dump per entry.
            context = {
                "device_posture": DEVICE_POSTURE_VALUES[entry.context.device_posture],
                "hour_utc": entry.context.hour_utc,
                "source": entry.context.source,
            }
            items.append(self._decision_item(principal, attributes, entry.resource, entry.role, duration_s,
                                             context, now_ms, field=f"requests[{index}].resource"))
        return {"decisions": await decide_batch(self.backends, items, self.settings.policy_shards)}

    async def shard_stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.backends.ledger(shard, "stats") for shard in range(self.settings.ledger_shards))))

    async def audit(self, caller: ApiKey, *, shard: int | None, after: str | None, limit: int) -> dict[str, Any]:
        self.require_scope(caller, "admin")
        if shard is not None and not 0 <= shard < self.settings.ledger_shards:
            raise InvalidInput(f"shard {shard} is out of range 0..{self.settings.ledger_shards - 1}", field="shard", value=shard)
        events, cursor = await self.reader.audit(shard=shard, after=after, limit=limit)
        return {"items": events, "next": cursor}

