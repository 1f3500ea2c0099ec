import asyncio

import numpy as np
import pytest

from actors.domain.clock import FakeClock
from actors.domain.columns import FIELD_SEPARATOR, entitlement_keys, pack_column, same_lengths, unpack_column
from actors.domain.directory import Principal, PrincipalDirectory
from actors.ledger import ledger_shard, ledger_shards
from actors.ledger.actor import GrantLedger
from actors.ledger.grants import plan_end, plan_extend, plan_removed
from actors.ledger.requests import Submission, plan_submit
from actors.ledger.state import ShardState
from cluster.batch_checks import BatchChecks, PrincipalRoutes
from cluster.check_cache import CheckCache
from jitgate.errors import InvalidInput
from jitgate.models import MAX_ITEMS_PER_BATCH

RESOURCE = "redis://target/orders"


def grant_for(state: ShardState, clock: FakeClock, principal: str, resource: str = RESOURCE, duration_s: int = 600,
              request_id: str = "req_1"):
    submission = Submission(
        request_id=request_id, submitter=principal, principal=principal, resource=resource, role="read",
        duration_s=duration_s, reason="incident 42", context={}, provisioner="record", idempotency_key=request_id,
        body_sha256="sha", key_id="key", decision={"effect": "allow", "reasons": [], "policy_version": "v1", "required_approvals": 1},
    )
    plan, _, grant = plan_submit(state, submission, shard=0, now_ms=clock.now_ms(), review_window_s=3600)
    state.apply(plan)
    return grant


def expiries(state: ShardState, clock: FakeClock, *entitlements: tuple[str, str, str]) -> list[int]:
    principals, resources, roles = zip(*entitlements)
    return state.active_expiries(entitlement_keys(principals, resources, roles), clock.now_ms()).tolist()


# ---- packed columns -------------------------------------------------------------------------


def test_packed_column_round_trip():
    values = ["alice", "bob@example.com", "zoë", "redis://target/orders"]
    packed = pack_column(values)
    assert isinstance(packed, bytes)
    assert unpack_column(packed, "principals") == values
    assert unpack_column(packed.decode(), "principals") == values


def test_empty_packed_column_has_no_values():
    assert pack_column([]) == b""
    assert unpack_column(b"", "roles") == []
    assert unpack_column("", "roles") == []


def test_unpack_accepts_lists_tuples_and_arrays():
    values = ["alice", "bob"]
    assert unpack_column(values, "principals") is values
    assert unpack_column(tuple(values), "principals") == values
    assert unpack_column(np.array(values), "principals") == values


def test_unpack_rejects_invalid_utf8():
    with pytest.raises(InvalidInput) as caught:
        unpack_column(b"alice\x1f\xff", "principals")
    assert caught.value.details["field"] == "principals"


def test_same_lengths_names_uneven_column():
    assert same_lengths({"principals": ["a", "b"], "resources": ["r", "s"], "roles": ["x", "y"]}) == 2
    with pytest.raises(InvalidInput) as caught:
        same_lengths({"principals": ["a", "b"], "resources": ["r"], "roles": ["x", "y"]})
    assert caught.value.details == {"field": "resources", "value": 1, "limit": 2}
    assert "principals 2, resources 1, roles 2" in caught.value.message


def test_forged_key_never_matches_valid_key():
    valid = entitlement_keys(["alice"], ["db"], ["read"])[0]
    forged = entitlement_keys([f"alice{FIELD_SEPARATOR}db"], ["read"], ["x"])[0]
    assert valid.count(FIELD_SEPARATOR) == 2
    assert forged.count(FIELD_SEPARATOR) > 2


def test_ledger_shards_match_ledger_shard():
    principals = [f"emp-{i:04x}" for i in range(500)] + ["zoë", ""]
    for shards in (1, 2, 3, 16):
        assert ledger_shards(principals, shards).tolist() == [ledger_shard(p, shards) for p in principals]


# ---- ledger state ---------------------------------------------------------------------------


def test_active_expiries_of_active_grant():
    state, clock = ShardState(), FakeClock()
    grant = grant_for(state, clock, "alice")
    found = expiries(state, clock, ("alice", RESOURCE, "read"), ("bob", RESOURCE, "read"), ("alice", RESOURCE, "write"))
    assert found == [grant.expires_ms, 0, 0]


def test_active_expiries_zero_at_deadline():
    state, clock = ShardState(), FakeClock()
    grant = grant_for(state, clock, "alice", duration_s=600)
    clock.advance(599.999)
    assert expiries(state, clock, ("alice", RESOURCE, "read")) == [grant.expires_ms]
    clock.advance(0.001)
    assert expiries(state, clock, ("alice", RESOURCE, "read")) == [0]


def test_active_expiries_follow_extend_and_revoke():
    state, clock = ShardState(), FakeClock()
    grant = grant_for(state, clock, "alice")
    plan, extended = plan_extend(grant, shard=0, duration_s=1200, now_ms=clock.now_ms(), actor="alice", key_id="k", reason="more")
    state.apply(plan)
    assert expiries(state, clock, ("alice", RESOURCE, "read")) == [extended.expires_ms]

    plan, revoking = plan_end(extended, "revoke", shard=0, now_ms=clock.now_ms(), actor="alice", key_id="k", reason="done")
    state.apply(plan)
    assert expiries(state, clock, ("alice", RESOURCE, "read")) == [0]
    plan, _ = plan_removed(revoking, shard=0, now_ms=clock.now_ms(), message="removed")
    state.apply(plan)
    assert expiries(state, clock, ("alice", RESOURCE, "read")) == [0]
    assert state.latest_expiry == {}


def test_active_expiries_take_latest_of_overlapping_grants():
    from actors.ledger.grants import plan_new_grant
    from actors.ledger.plan import Plan

    state, clock = ShardState(), FakeClock()
    first = grant_for(state, clock, "alice", duration_s=600)
    plan = Plan()
    second = plan_new_grant(plan, shard=0, request_id="req_9", principal="alice", resource=RESOURCE, role="read",
                            provisioner="record", duration_s=1200, now_ms=clock.now_ms(), actor="system", key_id="k")
    state.apply(plan)
    assert expiries(state, clock, ("alice", RESOURCE, "read")) == [second.expires_ms]

    plan, _ = plan_end(second, "revoke", shard=0, now_ms=clock.now_ms(), actor="alice", key_id="k", reason="done")
    state.apply(plan)
    assert expiries(state, clock, ("alice", RESOURCE, "read")) == [first.expires_ms]


# ---- routing and the batch path -------------------------------------------------------------


def directory() -> PrincipalDirectory:
    return PrincipalDirectory([Principal(id="alice", aliases=("Alice@Example.com",)), Principal(id="bob")])


def test_routes_use_canonical_ids():
    routes = PrincipalRoutes(directory(), shards=4)
    canonical, shards = routes.route(["alice@example.com ", "BOB", "carol"])
    assert canonical == ["alice", "bob", "carol"]
    assert shards.tolist() == [ledger_shard(name, 4) for name in canonical]


def test_routes_memo_emptied_when_full():
    routes = PrincipalRoutes(directory(), shards=2, max_entries=3)
    routes.route(["a", "b", "c"])
    assert len(routes) == 3
    canonical, _ = routes.route(["d", "BOB"])
    assert canonical == ["d", "bob"]
    assert len(routes) == 2


class LedgerStub:
    """The state and clock that `GrantLedger.check_entitlements` reads, without Redis."""

    def __init__(self, state: ShardState, clock: FakeClock) -> None:
        self.state = state
        self.clock = clock
        self._loaded = asyncio.Event()
        self._loaded.set()


class StateBackends:
    def __init__(self, shards: int, clock: FakeClock) -> None:
        self.states = [ShardState() for _ in range(shards)]
        self.ledgers = [LedgerStub(state, clock) for state in self.states]
        self.calls: list[int] = []

    async def ledger_read(self, shard: int, method: str, *args):
        assert method == "check_entitlements"
        self.calls.append(shard)
        return await GrantLedger.check_entitlements(self.ledgers[shard], *args)


def batch_checks(shards: int = 2, cache_ttl_ms: int = 0):
    clock = FakeClock()
    backends = StateBackends(shards, clock)
    return BatchChecks(backends, directory(), shards, clock.now_ms, CheckCache(cache_ttl_ms)), backends, clock


def check_alice(checks) -> tuple:
    """Run one batch check of alice's read access to RESOURCE: returns (allowed, expires_ms) arrays."""
    return asyncio.run(checks.check(["alice"], [RESOURCE], ["read"]))


def alice_allowed(checks) -> list[bool]:
    return check_alice(checks)[0].tolist()


def test_batch_answers_in_input_order():
    checks, backends, clock = batch_checks(shards=2)
    principals = ["alice", "bob", "carol", "dave", "erin"]
    granted = {}
    for principal in ("alice", "carol", "erin"):
        state = backends.states[ledger_shard(principal, 2)]
        granted[principal] = grant_for(state, clock, principal, request_id=f"req_{principal}").expires_ms
    allowed, expires_ms = asyncio.run(
        checks.check(pack_column(["Alice@Example.com", *principals[1:]]), pack_column([RESOURCE] * 5), pack_column(["read"] * 5))
    )
    assert allowed.dtype == np.bool_
    assert expires_ms.dtype == np.int64
    assert allowed.tolist() == [True, False, True, False, True]
    assert expires_ms.tolist() == [granted["alice"], 0, granted["carol"], 0, granted["erin"]]
    assert sorted(backends.calls) == sorted({ledger_shard(p, 2) for p in principals})


def test_batch_never_allows_past_expiry():
    checks, backends, clock = batch_checks(shards=1)
    grant_for(backends.states[0], clock, "alice", duration_s=60)
    assert alice_allowed(checks) == [True]
    clock.advance(60)
    allowed, expires_ms = check_alice(checks)
    assert allowed.tolist() == [False]
    assert expires_ms.tolist() == [0]


def test_empty_batch_calls_no_ledger():
    checks, backends, _ = batch_checks()
    allowed, expires_ms = asyncio.run(checks.check(b"", b"", b""))
    assert allowed.tolist() == []
    assert expires_ms.tolist() == []
    assert backends.calls == []


def test_batch_rejects_uneven_columns():
    checks, _, _ = batch_checks()
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(checks.check(["alice", "bob"], [RESOURCE], ["read", "read"]))
    assert caught.value.details["field"] == "resources"


def test_batch_rejects_more_than_limit():
    checks, backends, _ = batch_checks()
    count = MAX_ITEMS_PER_BATCH + 1
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(checks.check(["alice"] * count, [RESOURCE] * count, ["read"] * count))
    assert caught.value.details == {"field": "principals", "value": count, "limit": MAX_ITEMS_PER_BATCH}
    assert backends.calls == []


def test_batch_rejects_separator_in_value():
    checks, _, _ = batch_checks(shards=1)
    with pytest.raises(InvalidInput, match="U\\+001F"):
        asyncio.run(checks.check(["alice\x1fbob"], [RESOURCE], ["read"]))


def test_cached_batch_skips_ledgers():
    checks, backends, clock = batch_checks(shards=2, cache_ttl_ms=1_000)
    grant = grant_for(backends.states[ledger_shard("alice", 2)], clock, "alice")
    columns = (["alice", "bob"], [RESOURCE, RESOURCE], ["read", "read"])
    first = asyncio.run(checks.check(*columns))
    calls = len(backends.calls)
    assert calls > 0
    second = asyncio.run(checks.check(*columns))
    assert len(backends.calls) == calls
    assert second[0].tolist() == first[0].tolist() == [True, False]
    assert second[1].tolist() == [grant.expires_ms, 0]


def test_cached_batch_true_ends_at_expiry():
    checks, backends, clock = batch_checks(shards=1, cache_ttl_ms=60_000)
    grant_for(backends.states[0], clock, "alice", duration_s=10)
    assert alice_allowed(checks) == [True]
    clock.advance(9.999)
    assert alice_allowed(checks) == [True]
    clock.advance(0.001)
    allowed, expires_ms = check_alice(checks)
    assert allowed.tolist() == [False]
    assert expires_ms.tolist() == [0]


def test_invalidation_reaches_cached_batch():
    checks, backends, clock = batch_checks(shards=1, cache_ttl_ms=60_000)
    assert alice_allowed(checks) == [False]
    grant_for(backends.states[0], clock, "alice")
    assert alice_allowed(checks) == [False]
    checks.cache.invalidate(("alice", RESOURCE, "read"))
    assert alice_allowed(checks) == [True]
