"""Read paths served straight from Redis, the durable record, without an actor hop."""

from __future__ import annotations

import heapq
import re
import itertools
import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.ledger.plan import (
    GRANTS_INDEX,
    PENDING_INDEX,
    REQUESTS_INDEX,
    grant_key,
    idempotency_key,
    principal_grants_key,
    principal_requests_key,
    request_key,
    shard_key,
)
from actors.ledger.redis_store import unavailable
from jitgate.errors import InvalidInput

TERMINAL_GRANT_STATES = ("expired", "revoked")
# A Redis stream id: milliseconds and a sequence number, each at most 19 ASCII digits.
STREAM_ID = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}$")


class RedisReader:
    def __init__(self, client: aioredis.Redis, *, ledger_shards: int) -> None:
        self.client = client
        self.ledger_shards = ledger_shards

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as error:
            raise unavailable(error) from error

    async def _record(self, key: str) -> dict[str, Any] | None:
        data = await self._call(self.client.hget(key, "d"))
        return json.loads(data) if data else None

    async def _records(self, keys: list[str]) -> list[dict[str, Any]]:
        if not keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "d")
        return [json.loads(v) for v in await self._call(pipe.execute()) if v]

    async def request(self, request_id: str) -> dict[str, Any] | None:
        return await self._record(request_key(request_id))

    async def grant(self, grant_id: str) -> dict[str, Any] | None:
        return await self._record(grant_key(grant_id))

    async def idempotent_result(self, submitter: str, key: str) -> dict[str, Any] | None:
        value = await self._call(self.client.get(idempotency_key(submitter, key)))
        if value is None:
            return None
        request_id, _, body_sha256 = value.decode().partition(" ")
        request = await self.request(request_id)
        if request is None:
            return None
        grant = await self.grant(request["grant_id"]) if request.get("grant_id") else None
        return {"request": request, "grant": grant, "body_sha256": body_sha256}

    @staticmethod
    def _offset(after: str | None) -> int:
        if after is None:
            return 0
        if not (after.isascii() and after.isdigit()) or len(after) > 12:
            raise InvalidInput(f"after must be a cursor returned as 'next', got {after!r}", field="after", value=after)
        return int(after)

    async def _page(self, index: str, keys_of, matches, *, limit: int, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Walk an index newest first, keeping records that match, until `limit` are found."""
        offset = self._offset(after)
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            ids = await self._call(self.client.zrevrange(index, offset, offset + 4 * limit - 1))
            if not ids:
                return found, None
            records = await self._records([keys_of(i.decode()) for i in ids])
            for position, record in enumerate(records):
                if matches(record):
                    found.append(record)
                    if len(found) == limit:
                        return found, str(offset + position + 1)
            offset += len(ids)
        return found, str(offset)

    async def list_requests(self, *, state: str | None, principal: str | None, reviewer: str | None, limit: int,
                            after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        if reviewer is not None:
            index = PENDING_INDEX
        elif principal is not None:
            index = principal_requests_key(principal)
        elif state == "pending":
            index = PENDING_INDEX
        else:
            index = REQUESTS_INDEX

        def matches(record: dict[str, Any]) -> bool:
            if state is not None and record["state"] != state:
                return False
            if principal is not None and record["principal"] != principal:
                return False
            if reviewer is not None:
                # NOTE: this leaves out the reviewer's own requests but not those the policy
                # bars them from reviewing; policy eligibility is checked when the review arrives.
                if record["state"] != "pending" or reviewer in (record["principal"], record["submitter"]):
                    return False
                if any(r["reviewer"] == reviewer for r in record.get("reviews", ())):
                    return False
            return True

        return await self._page(index, request_key, matches, limit=limit, after=after)

    async def list_grants(self, *, principal: str | None, active: bool | None, limit: int,
                          after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        index = principal_grants_key(principal) if principal else GRANTS_INDEX

        def matches(record: dict[str, Any]) -> bool:
            if active is None:
                return True
            return (record["state"] == "active") == active

        return await self._page(index, grant_key, matches, limit=limit, after=after)

    async def audit(self, *, shard: int | None, after: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Audit events of one shard, or of all shards merged by time; the cursor keeps a position per shard."""
        shards = [shard] if shard is not None else list(range(self.ledger_shards))
        positions = self._audit_positions(after)
        per_shard: list[list[dict[str, Any]]] = []
        for s in shards:
            events: list[dict[str, Any]] = []
            per_shard.append(events)
            start = positions.get(s, "-")
            start = "-" if start == "-" else f"({start}"
            entries = await self._call(self.client.xrange(shard_key(s, "audit"), min=start, max="+", count=limit))
            for stream_id, fields in entries:
                event = json.loads(fields[b"e"])
                events.append({
                    "id": f"{s}:{stream_id.decode()}",
                    "shard": s,
                    "at": event["at_ms"],
                    "actor": event["actor"],
                    "key_id": event["key_id"],
                    "kind": event["kind"],
                    "subject": event["subject"],
                    "from_state": event["from_state"],
                    "to_state": event["to_state"],
                    "trigger": event["trigger"],
                    "message": event["message"],
                    "data": event["data"],
                    "hash": fields[b"h"].decode(),
                    "prev_hash": fields[b"p"].decode(),
                })
        # Merging keeps each shard's stream order, which the per-shard cursor relies on; event
        # times can be out of stream order by a few milliseconds.
        events = list(itertools.islice(heapq.merge(*per_shard, key=lambda e: e["at"]), limit))
        for event in events:
            positions[event["shard"]] = event["id"].split(":", 1)[1]
        cursor = ",".join(f"{s}:{p}" for s, p in sorted(positions.items())) if events else after
        from actors.domain.clock import to_iso

        for event in events:
            event["at"] = to_iso(event["at"])
        return events, cursor

    @staticmethod
    def _audit_positions(after: str | None) -> dict[int, str]:
        positions: dict[int, str] = {}
        if not after:
            return positions
        for part in after.split(","):
            shard, _, position = part.partition(":")
            if not (shard.isascii() and shard.isdigit() and len(shard) <= 3) or not STREAM_ID.match(position):
                raise InvalidInput(f"after must be a cursor returned as 'next', got {after!r}", field="after", value=after)
            positions[int(shard)] = position
        return positions
