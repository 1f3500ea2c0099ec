"""Redis persistence of one ledger shard.

Every transition is one call of `COMMIT_SCRIPT`, which checks all record versions and the
audit chain head, then writes records, indexes, audit events and cache invalidations together.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, TimeoutError as RedisTimeoutError

from actors.domain.audit import GENESIS_HASH
from actors.domain.lifecycle import GrantRecord, RequestRecord
from actors.ledger.plan import Plan, encode_plan, grant_key, request_key, shard_key
from jitgate.errors import Unavailable

logger = logging.getLogger("jitgate.ledger")

# A taken idempotency key wins over the version checks: a submission sent again after its
# first commit (its actor died before replying) finds its own records, and is replayed.
# The version compare-and-set prevents two writers (two concurrent approvals, or a primary
# and a stale former primary after failover) from both resolving the same record. The chain
# head compare-and-set keeps the audit chain linear when more than one writer is alive.
# NOTE: the script names keys it did not receive in KEYS, so it runs on a single Redis or
# Sentinel primary, not on Redis Cluster.
COMMIT_SCRIPT = """
local op = cjson.decode(ARGV[1])
local head = redis.call('GET', op.head_key)
if not head then head = ARGV[2] end
if head ~= op.expected_head then return {'head', head} end
if op.idem then
  local existing = redis.call('GET', op.idem[1])
  if existing then return {'idem', existing} end
end
for _, check in ipairs(op.checks) do
  local current = tonumber(redis.call('HGET', check[1], 'v') or '0')
  if current ~= check[2] then return {'version', check[1], tostring(current)} end
end
if op.idem then redis.call('SET', op.idem[1], op.idem[2]) end
for _, put in ipairs(op.puts) do
  redis.call('HSET', put[1], 'v', put[2], 'd', put[3])
end
for _, event in ipairs(op.events) do
  redis.call('XADD', op.stream, '*', 'e', event[1], 'p', event[2], 'h', event[3])
end
if #op.events > 0 then redis.call('SET', op.head_key, op.new_head) end
for _, z in ipairs(op.zadd) do redis.call('ZADD', z[1], z[2], z[3]) end
for _, z in ipairs(op.zrem) do redis.call('ZREM', z[1], z[2]) end
for _, p in ipairs(op.publish) do redis.call('PUBLISH', p[1], p[2]) end
return {'ok'}
"""

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True)
class CommitOutcome:
    ok: bool
    reason: str = ""  # "head", "version" or "idem" when not ok
    detail: str = ""


def unavailable(error: Exception) -> Unavailable:
    return Unavailable(f"Redis is unreachable ({type(error).__name__}: {error}); retry shortly", retry_after_s=1)


class LedgerStore:
    def __init__(self, client: aioredis.Redis, shard: int) -> None:
        self.client = client
        self.shard = shard
        self._script = client.register_script(COMMIT_SCRIPT)

    async def head(self) -> str:
        value = await self._call(self.client.get(shard_key(self.shard, "head")))
        return value.decode() if value else GENESIS_HASH

    async def commit(self, plan: Plan, head: str) -> tuple[CommitOutcome, str]:
        outcomes, new_head = await self.commit_many([plan], head)
        return outcomes[0], new_head

    async def commit_many(self, plans: list[Plan], head: str) -> tuple[list[CommitOutcome], str]:
        """Send several plans in one pipeline, each chained on the head the previous one leaves.

        Returns one outcome per plan and the head after the last accepted plan. Once a plan is
        rejected, the plans after it fail the head check and come back with reason "head".
        """
        arguments, heads = [], []
        running = head
        for plan in plans:
            argument, running = encode_plan(plan, shard=self.shard, head=running)
            arguments.append(argument)
            heads.append(running)
        results = await self._run_script(arguments)
        outcomes = []
        accepted_head = head
        for result, new_head in zip(results, heads):
            if isinstance(result, Exception):
                raise result
            status = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if status == "ok":
                outcomes.append(CommitOutcome(True))
                accepted_head = new_head
            else:
                detail = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
                outcomes.append(CommitOutcome(False, status, detail))
        return outcomes, accepted_head

    async def _run_script(self, arguments: list[str]) -> list[Any]:
        """Run the commit script once per argument in one pipeline, and return the replies in order.

        The pipeline sends EVALSHA alone. A pipeline that runs redis-py's `Script` sends SCRIPT
        EXISTS before every execute, one more round trip per commit. After a Redis restart the
        script cache is empty and EVALSHA returns NOSCRIPT without running the script, so the
        script is loaded and those calls are sent again.
        """
        results = await self._pipeline_evalsha(arguments)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            # SCRIPT LOAD returns the SHA1 of the script text, the same one `register_script` computed.
            await self._call(self.client.script_load(COMMIT_SCRIPT))
            for i, result in zip(missing, await self._pipeline_evalsha([arguments[i] for i in missing])):
                results[i] = result
        return results

    async def _pipeline_evalsha(self, arguments: list[str]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for argument in arguments:
            pipe.evalsha(self._script.sha, 0, argument, GENESIS_HASH)
        return await self._call(pipe.execute(raise_on_error=False))

    async def load_request(self, request_id: str) -> RequestRecord | None:
        data = await self._call(self.client.hget(request_key(request_id), "d"))
        return RequestRecord.from_dict(json.loads(data)) if data else None

    async def load_grant(self, grant_id: str) -> GrantRecord | None:
        data = await self._call(self.client.hget(grant_key(grant_id), "d"))
        return GrantRecord.from_dict(json.loads(data)) if data else None

    async def stream_position(self) -> str:
        """Id of the newest audit event of this shard, or "0-0" for an empty stream."""
        newest = await self._call(self.client.xrevrange(shard_key(self.shard, "audit"), count=1))
        if not newest:
            return "0-0"
        message_id = newest[0][0]
        return message_id.decode() if isinstance(message_id, bytes) else message_id

    async def load_records(self, kinds_by_id: dict[str, str]) -> list[tuple[str, RequestRecord | GrantRecord]]:
        """Load requests and grants by id; `kinds_by_id` maps each id to "request" or "grant"."""
        ids = list(kinds_by_id)
        pipe = self.client.pipeline(transaction=False)
        for record_id in ids:
            key = request_key(record_id) if kinds_by_id[record_id] == "request" else grant_key(record_id)
            pipe.hget(key, "d")
        found: list[tuple[str, RequestRecord | GrantRecord]] = []
        for record_id, value in zip(ids, await self._call(pipe.execute())):
            if not value:
                continue
            kind = kinds_by_id[record_id]
            data = json.loads(value)
            found.append((kind, RequestRecord.from_dict(data) if kind == "request" else GrantRecord.from_dict(data)))
        return found

    async def load_open(self) -> tuple[list[RequestRecord], list[GrantRecord]]:
        """Load the pending requests and the active or revoking grants of this shard."""
        request_ids = await self._call(self.client.zrange(shard_key(self.shard, "pending"), 0, -1))
        grant_ids = await self._call(self.client.zrange(shard_key(self.shard, "open_grants"), 0, -1))
        requests = await self._load_many([request_key(i.decode()) for i in request_ids])
        grants = await self._load_many([grant_key(i.decode()) for i in grant_ids])
        return [RequestRecord.from_dict(d) for d in requests], [GrantRecord.from_dict(d) for d in grants]

    async def _load_many(self, keys: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), 1000):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[start : start + 1000]:
                pipe.hget(key, "d")
            for value in await self._call(pipe.execute()):
                if value:
                    found.append(json.loads(value))
        return found

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except REDIS_ERRORS as error:
            raise unavailable(error) from error
        except RedisError as error:
            if "LOADING" in str(error) or "MISCONF" in str(error):
                raise unavailable(error) from error
            raise
