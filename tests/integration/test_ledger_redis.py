"""GrantLedger in-process against real Redis servers: persistence, expiry, ACL provisioning."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from actors.domain.clock import SystemClock
from actors.ledger.actor import GrantLedger
from actors.ledger.plan import shard_key
from actors.domain.audit import verify_chain
from actors.provisioners.redis_acl import acl_username
from jitgate.errors import Conflict, IdempotencyMismatch

pytestmark = pytest.mark.integration

RESOURCE = "redis://target/orders"


def submission(request_id: str, *, effect: str = "allow", duration_s: int = 60, key: str | None = None, sha: str = "s1") -> dict:
    return {
        "request_id": request_id, "submitter": "alice", "principal": "alice", "resource": RESOURCE, "role": "read",
        "duration_s": duration_s, "reason": "incident", "context": {}, "provisioner": "redis-acl",
        "idempotency_key": key or request_id, "body_sha256": sha, "key_id": "key-alice",
        "decision": {"effect": effect, "reasons": ["test"], "policy_version": "v1", "required_approvals": 1},
    }


def config(redis_server, target_redis) -> dict:
    return {"redis_url": redis_server.url, "review_window_s": 3600, "target_redis_url": target_redis.url}


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def can_login(target_redis, username: str, password: str) -> bool:
    client = redis.Redis.from_url(target_redis.url, username=username, password=password)
    try:
        client.ping()
        return True
    except redis.exceptions.AuthenticationError:
        return False
    finally:
        client.close()


def test_grant_applies_and_expires(redis_server, target_redis):
    async def scenario() -> None:
        ledger = GrantLedger(0, config(redis_server, target_redis))
        await ledger.ready()
        stored = await ledger.submit(submission("req_a", duration_s=1))
        grant = stored["grant"]
        credentials = await ledger.credentials(grant["id"], "alice")
        assert can_login(target_redis, credentials["username"], credentials["password"])
        assert (await ledger.check("alice", RESOURCE, "read"))["allowed"]

        async def ended() -> bool:
            record = await ledger.store.load_grant(grant["id"])
            return record.state.value == "expired"

        await until(ended, timeout_s=3.0)
        assert not (await ledger.check("alice", RESOURCE, "read"))["allowed"]
        assert not can_login(target_redis, credentials["username"], credentials["password"])

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_server.url)
    entries = client.xrange(shard_key(0, "audit"))
    events = [json.loads(fields[b"e"]) for _, fields in entries]
    assert [e["to_state"] for e in events] == ["approved", "active", "revoking", "expired"]
    assert verify_chain((f[b"e"].decode(), f[b"p"].decode(), f[b"h"].decode()) for _, f in entries) is None


def test_idempotency_same_and_different_body(redis_server, target_redis):
    async def scenario() -> None:
        ledger = GrantLedger(0, config(redis_server, target_redis))
        first = await ledger.submit(submission("req_1", key="k1", effect="review"))
        again = await ledger.submit(submission("req_2", key="k1", effect="review"))
        assert again["request"]["id"] == first["request"]["id"]
        assert again["replayed"]
        with pytest.raises(IdempotencyMismatch):
            await ledger.submit(submission("req_3", key="k1", sha="other", effect="review"))

    asyncio.run(scenario())


def test_resent_submission_replays_on_stale_actor(redis_server, target_redis):
    """A submission sent again to an actor that has not seen its first commit is replayed, not rejected."""

    async def scenario() -> None:
        stale = GrantLedger(0, config(redis_server, target_redis), role="replica")
        await stale.ready()

        async def lagging(messages: list) -> None:
            """Skip the new entries, as a follower that lags behind the stream does."""

        stale._apply_events = lagging
        primary = GrantLedger(0, config(redis_server, target_redis))
        first = await primary.submit(submission("req_s", key="k-resent"))
        assert stale.state.known_version("req_s") == 0

        [again] = await stale.submit_many([submission("req_s", key="k-resent")])
        assert not isinstance(again, Exception), again
        assert again["replayed"]
        assert again["request"]["id"] == first["request"]["id"]
        assert again["grant"]["id"] == first["grant"]["id"]

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_server.url)
    events = [json.loads(fields[b"e"]) for _, fields in client.xrange(shard_key(0, "audit"))]
    assert [e["to_state"] for e in events if e["subject"] == "req_s"] == ["approved"]


def test_restart_rebuilds_state_and_expires_overdue(redis_server, target_redis):
    async def first_life() -> str:
        ledger = GrantLedger(0, config(redis_server, target_redis))
        stored = await ledger.submit(submission("req_r", duration_s=1))
        for task in ledger._tasks:
            task.cancel()
        return stored["grant"]["id"]

    grant_id = asyncio.run(first_life())
    username = acl_username("alice", RESOURCE, "read")
    assert redis.Redis.from_url(target_redis.url).execute_command("ACL", "GETUSER", username) is not None

    class LaterClock:
        """The wall clock two seconds ahead: the ledger comes back after the grant's deadline."""

        def now_ms(self) -> int:
            return SystemClock().now_ms() + 2_000

    async def second_life() -> None:
        ledger = GrantLedger(0, config(redis_server, target_redis), clock=LaterClock())
        await ledger.ready()

        async def ended() -> bool:
            record = await ledger.store.load_grant(grant_id)
            return record.state.value == "expired"

        await until(ended, timeout_s=2.0)

    asyncio.run(second_life())
    assert redis.Redis.from_url(target_redis.url).execute_command("ACL", "GETUSER", username) is None


def test_concurrent_approvals_one_grant(redis_server, target_redis):
    async def scenario() -> None:
        ledger = GrantLedger(0, config(redis_server, target_redis))
        stored = await ledger.submit(submission("req_c", effect="review"))
        request_id = stored["request"]["id"]
        results = await asyncio.gather(
            *(ledger.review(request_id, reviewer, "approve", "ok", None, "v1", "redis-acl", f"key-{reviewer}") for reviewer in ("bob", "carol", "dave")),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, dict)]
        losers = [r for r in results if isinstance(r, Conflict)]
        assert len(winners) == 1
        assert len(losers) == 2
        assert winners[0]["grant"]["state"] == "active"

    asyncio.run(scenario())


def test_commit_after_script_flush(redis_server, target_redis):
    """A commit after the script cache was emptied, as a Redis restart does, loads the script and succeeds."""

    async def scenario() -> None:
        ledger = GrantLedger(0, config(redis_server, target_redis))
        await ledger.submit(submission("req_f1", effect="review"))
        await ledger.client.script_flush()
        results = await ledger.submit_many([submission("req_f2", effect="review"), submission("req_f3", effect="review")])
        assert [r["request"]["state"] for r in results] == ["pending", "pending"]

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_server.url)
    entries = client.xrange(shard_key(0, "audit"))
    assert [json.loads(fields[b"e"])["subject"] for _, fields in entries] == ["req_f1", "req_f2", "req_f3"]
    assert verify_chain((f[b"e"].decode(), f[b"p"].decode(), f[b"h"].decode()) for _, f in entries) is None


def test_primary_skips_loading_own_commits(redis_server, target_redis):
    """The primary follows the stream for other actors' writes and loads no record of its own commits."""

    async def scenario() -> int:
        ledger = GrantLedger(0, config(redis_server, target_redis))
        await ledger.ready()
        loaded: list[str] = []
        load_records = ledger.store.load_records

        async def counting(kinds_by_id: dict[str, str]):
            loaded.extend(kinds_by_id)
            return await load_records(kinds_by_id)

        ledger.store.load_records = counting
        batches = [[submission(f"req_o{b}_{i}", effect="review") | {"principal": f"p{b}_{i}"} for i in range(5)] for b in range(40)]
        for results in await asyncio.gather(*(ledger.submit_many(batch) for batch in batches)):
            assert all(r["request"]["state"] == "pending" for r in results)
        last = await ledger.store.stream_position()

        async def followed() -> bool:
            return ledger._stream_position == last

        await until(followed)
        return len(loaded)

    assert asyncio.run(scenario()) == 0


def test_target_restart_reapplies_access(redis_server, target_redis):
    """A restarted target Redis has lost its ACL users, so the primary applies its active grants again."""

    async def scenario() -> None:
        ledger = GrantLedger(0, config(redis_server, target_redis))
        await ledger.ready()
        stored = await ledger.submit(submission("req_t", duration_s=60))
        credentials = await ledger.credentials(stored["grant"]["id"], "alice")
        assert can_login(target_redis, credentials["username"], credentials["password"])

        target_redis.kill()
        target_redis.restart()
        assert not can_login(target_redis, credentials["username"], credentials["password"])

        async def restored() -> bool:
            return can_login(target_redis, credentials["username"], credentials["password"])

        await until(restored, timeout_s=5.0)
        assert (await ledger.check("alice", RESOURCE, "read"))["allowed"]

    asyncio.run(scenario())
