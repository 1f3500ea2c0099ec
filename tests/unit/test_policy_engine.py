"""Decision rules of the policy engine, on small bundles written per test and on the default bundle."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from actors.policy import (
    PolicyBundle,
    PolicyDecision,
    PolicyEngine,
    PolicyInput,
    PolicyInputError,
    policy_shard,
    risk_to_tenths,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "configs" / "policies"
GLOBAL_MAX_S = 43200

ELIGIBLE_READ = """
@id("read-all")
@max_duration_s("7200")
permit (principal, action == Action::"request", resource) when { context.role == "read" };
"""


def write_bundle(directory: Path, policies: str, version: str = "1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEFAULT_BUNDLE / "schema.cedarschema.json", directory / "schema.cedarschema.json")
    (directory / "bundle.yaml").write_text(f'name: test\nversion: "{version}"\n')
    (directory / "policies.cedar").write_text(policies)
    return directory


def make_engine(tmp_path: Path, policies: str, global_max_duration_s: int = GLOBAL_MAX_S) -> PolicyEngine:
    bundle = PolicyBundle.load(write_bundle(tmp_path / "bundle", policies))
    return PolicyEngine(bundle, global_max_duration_s=global_max_duration_s)


def make_input(**changes) -> PolicyInput:
    base = PolicyInput(
        principal="alice",
        principal_attributes={"groups": ["payments"], "department": "payments", "on_call": False},
        resource="postgres://prod/orders",
        resource_attributes={"owner_team": "payments", "sensitivity": "medium"},
        role="read",
        duration_s=3600,
        risk_score=10.0,
        device_posture="managed",
        hour_utc=12,
        source="api",
    )
    return replace(base, **changes)


@pytest.fixture(scope="module")
def default_bundle() -> PolicyBundle:
    return PolicyBundle.load(DEFAULT_BUNDLE)


def test_deny_wins_over_permit(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + """
@id("no-orders")
@reason("orders is closed")
forbid (principal, action == Action::"request", resource == Resource::"postgres://prod/orders");
@id("auto-all")
permit (principal, action == Action::"auto_approve", resource);
""")
    decision = engine.decide(make_input())
    assert decision.effect == "deny"
    assert decision.reasons == ("denied by no-orders: orders is closed",)
    assert decision.max_duration_s == 0
    assert decision.required_approvals == 0


def test_no_permit_denies_naming_role_and_resource(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ)
    decision = engine.decide(make_input(role="write"))
    assert decision.effect == "deny"
    assert decision.reasons == ("no policy permits requesting write on postgres://prod/orders",)


def test_max_duration_smallest_cap_applies(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + """
@id("read-orders-short")
@max_duration_s("1800")
permit (principal, action == Action::"request", resource) when { resource.owner_team == "payments" };
""")
    decision = engine.decide(make_input(duration_s=1800))
    assert decision.effect == "review"
    assert decision.max_duration_s == 1800
    other_team = engine.decide(make_input(resource_attributes={"owner_team": "search", "sensitivity": "low"}))
    assert other_team.max_duration_s == 7200


def test_global_maximum_caps_policy_maximum(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ, global_max_duration_s=600)
    decision = engine.decide(make_input(duration_s=900))
    assert decision.effect == "deny"
    assert decision.max_duration_s == 600
    assert decision.reasons == (
        "requested duration 900 s exceeds the maximum of 600 s for read on postgres://prod/orders (global maximum)",
    )


def test_permit_without_cap_gets_global_maximum(tmp_path):
    engine = make_engine(tmp_path, 'permit (principal, action == Action::"request", resource);'.replace(
        "permit", '@id("any")\npermit', 1))
    assert engine.decide(make_input(duration_s=100)).max_duration_s == GLOBAL_MAX_S


def test_over_maximum_denies_naming_maximum(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ)
    decision = engine.decide(make_input(duration_s=7201))
    assert decision.effect == "deny"
    assert decision.max_duration_s == 7200
    assert decision.reasons == (
        "requested duration 7201 s exceeds the maximum of 7200 s for read on postgres://prod/orders "
        "(policy read-all)",
    )


def test_duration_at_maximum_is_not_clamped(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + """
@id("auto-all")
permit (principal, action == Action::"auto_approve", resource);
""")
    decision = engine.decide(make_input(duration_s=7200))
    assert decision.effect == "allow"
    assert decision.max_duration_s == 7200
    assert decision.reasons == ("eligible by read-all", "auto-approved by auto-all")


def test_review_takes_largest_approvals(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + """
@id("read-two")
@approvals("2")
permit (principal, action == Action::"request", resource);
@id("auto-read")
permit (principal, action == Action::"auto_approve", resource) when { context.role == "read" };
@id("orders-three")
@reason("orders needs three")
@approvals("3")
forbid (principal, action == Action::"auto_approve", resource == Resource::"postgres://prod/orders");
""")
    orders = engine.decide(make_input())
    assert orders.effect == "review"
    assert orders.required_approvals == 3
    assert "auto-approval blocked by orders-three: orders needs three" in orders.reasons
    assert "3 approvals required by orders-three" in orders.reasons

    cache = engine.decide(make_input(resource="redis://prod/cache", role="admin"))
    assert cache.effect == "review"
    assert cache.required_approvals == 2


def test_review_defaults_to_one_approval(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ)
    decision = engine.decide(make_input(risk_score=42.0, device_posture="unknown"))
    assert decision.effect == "review"
    assert decision.required_approvals == 1
    assert decision.reasons[-1] == (
        "no policy auto-approves read on postgres://prod/orders at risk 42.0 with device posture unknown"
    )


def test_evaluation_error_fails_closed(tmp_path):
    # Long overflow is a runtime error that schema validation cannot rule out.
    engine = make_engine(tmp_path, ELIGIBLE_READ + """
@id("overflowing-forbid")
forbid (principal, action == Action::"request", resource)
when { context.duration_s * 9223372036854775807 > 0 };
""")
    decision = engine.decide(make_input())
    assert decision.effect == "deny"
    assert decision.reasons[0].startswith("policy evaluation failed:")
    assert "overflowing-forbid" in decision.reasons[0]


def test_policy_version_in_decision(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ)
    assert engine.decide(make_input()).policy_version == engine.bundle.version
    assert engine.bundle.version.startswith("1+")


def test_unknown_sensitivity_read_and_write(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    uncatalogued = {"owner_team": "unknown", "sensitivity": "unknown"}
    replay = {"mgr_id": "1540", "role_code": "118539"}
    read = engine.decide(make_input(
        principal="amazon-user:1", principal_attributes=replay, resource="amazon:78766",
        resource_attributes=uncatalogued, source="replay",
    ))
    assert read.effect == "allow"
    assert read.max_duration_s == 28800
    write = engine.decide(make_input(
        principal_attributes={"groups": ["engineering"]}, resource="amazon:78766",
        resource_attributes=uncatalogued, role="write",
    ))
    assert write.effect == "deny"


def test_default_bundle_replay_mix(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    effects = {}
    for index, (risk, posture) in enumerate(
        [(5.0, "managed"), (20.0, "managed"), (60.0, "managed"), (10.0, "unmanaged"), (97.0, "managed")]
    ):
        decision = engine.decide(make_input(
            principal=f"amazon-user:{index}", principal_attributes={"role_code": "1"},
            resource=f"amazon:{index}", resource_attributes={"owner_team": "unknown", "sensitivity": "unknown"},
            risk_score=risk, device_posture=posture, source="replay",
        ))
        effects[(risk, posture)] = decision.effect
    assert effects == {
        (5.0, "managed"): "allow",
        (20.0, "managed"): "allow",
        (60.0, "managed"): "review",
        (10.0, "unmanaged"): "review",
        (97.0, "managed"): "deny",
    }


def test_cache_same_key_same_result(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    first = engine.decide(make_input())
    second = engine.decide(make_input())
    assert second is first
    stats = engine.cache_stats()
    assert stats.hits == 1
    assert stats.misses == 1


def test_cache_keys_on_risk_tenths(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    below = engine.decide(make_input(risk_score=49.94))
    same_tenth = engine.decide(make_input(risk_score=49.91))
    at_threshold = engine.decide(make_input(risk_score=50.0))
    assert same_tenth is below
    assert below.effect == "allow"
    assert at_threshold.effect == "review"


def test_cache_distinguishes_attributes(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    member = engine.decide(make_input(role="write", risk_score=5.0))
    outsider = engine.decide(make_input(role="write", risk_score=5.0, principal_attributes={"groups": ["sales"]}))
    assert member.effect == "allow"
    assert outsider.effect == "deny"


def test_cache_ignores_undeclared_attributes(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    engine.decide(make_input())
    engine.decide(make_input(principal_attributes={
        "groups": ["payments"], "department": "payments", "on_call": False, "role_code": "118539",
    }))
    assert engine.cache_stats().hits == 1


def test_cache_bounded(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=3)
    engine.decide_batch([make_input(principal_attributes={"groups": [f"team-{i}"]}) for i in range(10)])
    assert engine.cache_stats().size == 3


def test_changed_bundle_invalidates_cache(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ)
    assert engine.decide(make_input()).effect == "review"
    stricter = PolicyBundle.load(write_bundle(tmp_path / "stricter", ELIGIBLE_READ + """
@id("no-reads")
forbid (principal, action == Action::"request", resource);
""", version="2"))
    engine.replace_bundle(stricter)
    decision = engine.decide(make_input())
    assert decision.effect == "deny"
    assert decision.policy_version == stricter.version
    assert engine.cache_stats().size == 1


def test_batch_deduplicates_identical_inputs(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=0)
    decisions = engine.decide_batch([make_input(), make_input(), make_input(role="write")])
    assert decisions[0] is decisions[1]
    assert engine.cache_stats().misses == 2


def test_batch_matches_single_decisions(default_bundle):
    inputs = [
        make_input(role=role, risk_score=risk, device_posture=posture, resource_attributes=attributes)
        for role in ("read", "write", "admin")
        for risk in (5.0, 35.0, 96.0)
        for posture in ("managed", "unmanaged")
        for attributes in (
            {"owner_team": "payments", "sensitivity": "low"},
            {"owner_team": "payments", "sensitivity": "critical"},
        )
    ]
    batch_engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=0)
    single_engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=0)
    batch = batch_engine.decide_batch(inputs)
    assert batch == [single_engine.decide(item) for item in inputs]
    assert {decision.effect for decision in batch} == {"allow", "review", "deny"}


def test_batch_same_principal_different_attributes(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    member = make_input(role="write", risk_score=5.0)
    outsider = make_input(role="write", risk_score=5.0, principal_attributes={"groups": ["sales"]})
    decisions = engine.decide_batch([member, outsider])
    assert [d.effect for d in decisions] == ["allow", "deny"]


def test_may_review_rules(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    request = make_input()
    assert engine.may_review("erin", {"groups": ["approvers"]}, request) == (
        True, ["eligible reviewer by reviewer-approvers-group"],
    )
    assert engine.may_review("frank", {"groups": ["payments"]}, request)[0] is True
    assert engine.may_review("bob", {"groups": ["sales"]}, request) == (
        False, ["no policy permits bob to review read on postgres://prod/orders"],
    )
    assert engine.may_review("alice", {"groups": ["approvers"]}, request) == (
        False, ["rejected by no-self-review: nobody reviews their own request"],
    )


def test_may_review_admin_needs_sre(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    request = make_input(role="admin")
    eligible, reasons = engine.may_review("erin", {"groups": ["approvers"]}, request)
    assert eligible is False
    assert reasons == ["rejected by reviewer-admin-needs-sre: admin requests are reviewed by the sre group only"]
    assert engine.may_review("gina", {"groups": ["approvers", "sre"]}, request)[0] is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": "owner"}, "role must be one of"),
        ({"duration_s": 0}, "duration_s must be a positive integer"),
        ({"duration_s": True}, "duration_s must be a positive integer"),
        ({"risk_score": 100.5}, "risk_score must be a number from 0 to 100"),
        ({"device_posture": "jailbroken"}, "device_posture must be one of"),
        ({"hour_utc": 24}, "hour_utc must be an integer from 0 to 23"),
        ({"principal": ""}, "principal must be a non-empty string"),
        ({"resource_attributes": {"owner_team": "x", "sensitivity": "secret"}}, "sensitivity must be one of"),
    ],
)
def test_input_rejects_invalid_field(changes, message):
    with pytest.raises(PolicyInputError, match=message):
        make_input(**changes)


def test_input_from_dict_rejects_unknown_and_missing_fields():
    data = make_input().to_dict()
    with pytest.raises(PolicyInputError, match="unknown policy input field"):
        PolicyInput.from_dict({**data, "ticket": "T-1"})
    del data["source"]
    with pytest.raises(PolicyInputError, match="missing policy input field.*source"):
        PolicyInput.from_dict(data)


def test_attribute_type_mismatch_names_attribute(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    with pytest.raises(PolicyInputError, match=r"principal_attributes\.groups must be a Cedar Set<String>"):
        engine.decide(make_input(principal_attributes={"groups": "payments"}))
    with pytest.raises(PolicyInputError, match=r"resource_attributes\.owner_team is missing"):
        engine.decide(make_input(resource_attributes={"sensitivity": "low"}))


def test_string_booleans_are_coerced(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    on_call = make_input(role="admin", principal_attributes={"groups": ["payments"], "on_call": "true"})
    assert engine.decide(on_call).effect == "review"


def test_decision_to_dict():
    decision = PolicyDecision("review", ("eligible by x",), 3600, 2, "1+abc")
    assert decision.to_dict() == {
        "effect": "review",
        "reasons": ["eligible by x"],
        "max_duration_s": 3600,
        "required_approvals": 2,
        "policy_version": "1+abc",
    }


def test_policy_shard_is_stable_and_in_range():
    assert policy_shard("postgres://prod/orders", 4) == policy_shard("postgres://prod/orders", 4)
    assert policy_shard("postgres://prod/orders", 1) == 0
    # zlib.crc32(b"amazon:78766") is fixed across processes and Python versions.
    assert policy_shard("amazon:78766", 7) == 1047918967 % 7
    assert {policy_shard(f"amazon:{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="shards must be at least 1"):
        policy_shard("x", 0)


@pytest.mark.parametrize(
    ("risk_score", "tenths"),
    [(0.0, 0), (29.3, 293), (49.99, 499), (50.0, 500), (94.95, 949), (100.0, 1000)],
)
def test_risk_to_tenths(risk_score, tenths):
    assert risk_to_tenths(risk_score) == tenths
