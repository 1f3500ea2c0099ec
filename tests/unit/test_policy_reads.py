"""What the policies read, and the decision cache keyed on it."""

from __future__ import annotations

import json
from collections import Counter

import cedarpy
import pytest

from actors.policy import PolicyBundle, PolicyEngine
from actors.policy.reads import PolicyReads, analyze_policies, bucket
from tests.unit.test_policy_engine import (
    DEFAULT_BUNDLE,
    ELIGIBLE_READ,
    GLOBAL_MAX_S,
    REPO,
    make_engine,
    make_input,
)

AUTO_ALL = """
@id("auto-all")
permit (principal, action == Action::"auto_approve", resource);
"""


def reads_of(policies: str) -> PolicyReads:
    return analyze_policies(json.loads(cedarpy.policies_to_json_str(policies))["staticPolicies"].values())


@pytest.fixture(scope="module")
def default_bundle() -> PolicyBundle:
    return PolicyBundle.load(DEFAULT_BUNDLE)


# ---- analysis -------------------------------------------------------------------------------


def test_default_bundle_reads(default_bundle):
    reads = default_bundle.decision_reads
    assert reads.context.attributes == {"role": None, "device_posture": None, "risk_tenths": (300, 500, 950)}
    assert reads.context.every_attribute is False
    assert reads.principal.attributes == {"groups": None, "on_call": None}
    assert reads.principal.entity_id is False
    assert reads.resource.attributes == {"owner_team": None, "sensitivity": None}
    assert reads.resource.entity_id is False


def test_review_policies_left_out(default_bundle):
    # `principal == context.requester` is in a review policy, which never decides a request.
    assert "requester" not in default_bundle.decision_reads.context.attributes


@pytest.mark.parametrize(
    ("condition", "cut_points"),
    [
        ("context.risk_tenths < 500", (500,)),
        ("context.risk_tenths >= 500", (500,)),
        ("context.risk_tenths <= 500", (501,)),
        ("context.risk_tenths > 500", (501,)),
        ("500 > context.risk_tenths", (500,)),
        ("500 >= context.risk_tenths", (501,)),
        ("context.risk_tenths == 500", (500, 501)),
        ("context.risk_tenths != 500 && context.risk_tenths < 300", (300, 500, 501)),
    ],
)
def test_comparison_cut_points(condition, cut_points):
    reads = reads_of(f'@id("p") permit (principal, action, resource) when {{ {condition} }};')
    assert reads.context.attributes == {"risk_tenths": cut_points}


@pytest.mark.parametrize(
    "condition",
    [
        "context.duration_s * 2 > 7200",
        "context.hour_utc < context.duration_s",
        "[1800, 3600].contains(context.duration_s)",
        "(if context.role == \"read\" then context.duration_s else 0) > 7200",
        "-context.duration_s < -3600",
    ],
)
def test_unbucketable_use_keeps_exact_value(condition):
    reads = reads_of(f'@id("p") permit (principal, action, resource) when {{ {condition} }};')
    assert reads.context.attributes["duration_s"] is None


def test_threshold_and_exact_use_keeps_exact_value():
    reads = reads_of("""
@id("a") permit (principal, action, resource) when { context.duration_s > 3600 };
@id("b") permit (principal, action, resource) when { context.duration_s + 1 > 0 };
""")
    assert reads.context.attributes["duration_s"] is None


def test_has_alone_keeps_exact_value_and_allows_buckets():
    reads = reads_of("""
@id("a") permit (principal, action, resource) when { principal has level };
@id("b") permit (principal, action, resource) when { resource has tier && resource.tier > 2 };
""")
    assert reads.principal.attributes == {"level": None}
    assert reads.resource.attributes == {"tier": (3,)}


def test_entity_compared_reads_id():
    reads = reads_of("""
@id("a") permit (principal == User::"alice", action, resource);
@id("b") permit (principal, action, resource) when { resource in Resource::"orders" };
""")
    assert reads.principal.entity_id is True
    assert reads.resource.entity_id is True
    assert reads.principal.every_attribute is False


def test_whole_context_counts_every_attribute():
    reads = reads_of('@id("a") permit (principal, action, resource) when { context has role && context == {} };')
    assert reads.context.every_attribute is True
    assert reads.context.cut_points("risk_tenths") is None


def test_unknown_expression_counts_everything():
    policy = {
        "effect": "permit",
        "principal": {"op": "All"},
        "action": {"op": "All"},
        "resource": {"op": "All"},
        "conditions": [{"kind": "when", "body": {"futureOperator": {"arg": {"Value": 1}}}}],
    }
    assert analyze_policies([policy]) == PolicyReads.everything()


def test_bucket_boundaries():
    cut_points = (300, 500, 950)
    assert [bucket(value, cut_points) for value in (0, 299, 300, 499, 500, 949, 950, 1000)] == [0, 0, 1, 1, 2, 2, 3, 3]


# ---- shared evaluations -----------------------------------------------------------------------


def test_unread_values_share_one_evaluation(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=0)
    first = make_input(risk_score=60.0, device_posture="unknown")
    # Another principal, resource and unread attributes, duration, hour, source and risk in the same interval.
    second = make_input(
        principal="bob",
        principal_attributes={"groups": ["payments"], "on_call": False, "department": "sales", "title": "analyst"},
        resource="postgres://prod/payments",
        resource_attributes={"owner_team": "payments", "sensitivity": "medium", "provisioner": "redis-acl"},
        duration_s=900,
        hour_utc=3,
        source="replay",
        risk_score=72.4,
        device_posture="unknown",
    )
    decisions = engine.decide_batch([first, second])
    assert engine.cache_stats().misses == 1
    assert [decision.effect for decision in decisions] == ["review", "review"]
    assert decisions[0].reasons[-1] == (
        "no policy auto-approves read on postgres://prod/orders at risk 60.0 with device posture unknown"
    )
    assert decisions[1].reasons[-1] == (
        "no policy auto-approves read on postgres://prod/payments at risk 72.4 with device posture unknown"
    )


def test_cache_hit_for_unread_values(default_bundle):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    first = engine.decide(make_input())
    second = engine.decide(make_input(principal="bob", resource="postgres://prod/other", hour_utc=2, source="cli"))
    assert second is first
    assert engine.cache_stats().hits == 1


@pytest.mark.parametrize(
    ("role", "groups", "below", "above", "effects"),
    [
        ("read", ["payments"], 49.9, 50.0, ["allow", "review"]),
        ("write", ["payments"], 29.9, 30.0, ["allow", "review"]),
        ("read", ["payments"], 94.9, 95.0, ["review", "deny"]),
    ],
)
def test_threshold_sides_evaluated_apart(default_bundle, role, groups, below, above, effects):
    engine = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=0)
    inputs = [
        make_input(role=role, principal_attributes={"groups": groups}, risk_score=below),
        make_input(role=role, principal_attributes={"groups": groups}, risk_score=above),
    ]
    decisions = engine.decide_batch(inputs)
    assert engine.cache_stats().misses == 2
    assert [decision.effect for decision in decisions] == effects


def test_bundle_reading_duration_keys_on_it(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + AUTO_ALL + """
@id("long-needs-review")
forbid (principal, action == Action::"auto_approve", resource) when { context.duration_s > 3600 };
""")
    assert engine.bundle.decision_reads.context.attributes["duration_s"] == (3601,)
    decisions = engine.decide_batch([make_input(duration_s=1800), make_input(duration_s=3600), make_input(duration_s=3601)])
    assert [decision.effect for decision in decisions] == ["allow", "allow", "review"]
    assert engine.cache_stats().misses == 2


def test_duration_arithmetic_keys_on_exact_value(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + AUTO_ALL + """
@id("long-needs-review")
forbid (principal, action == Action::"auto_approve", resource) when { context.duration_s * 2 > 7200 };
""")
    assert engine.bundle.decision_reads.context.attributes["duration_s"] is None
    decisions = engine.decide_batch([make_input(duration_s=1800), make_input(duration_s=1801)])
    assert [decision.effect for decision in decisions] == ["allow", "allow"]
    assert engine.cache_stats().misses == 2


def test_duration_over_cap_checked_per_request(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + AUTO_ALL)
    within, over = engine.decide_batch([make_input(duration_s=7200), make_input(resource="redis://x", duration_s=7201)])
    assert engine.cache_stats().misses == 1
    assert within.effect == "allow"
    assert over.effect == "deny"
    assert over.reasons == (
        "requested duration 7201 s exceeds the maximum of 7200 s for read on redis://x (policy read-all)",
    )


def test_no_permit_reason_names_each_request(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ)
    decisions = engine.decide_batch([make_input(role="write"), make_input(role="write", resource="redis://x")])
    assert engine.cache_stats().misses == 1
    assert decisions[0].reasons == ("no policy permits requesting write on postgres://prod/orders",)
    assert decisions[1].reasons == ("no policy permits requesting write on redis://x",)


def test_error_outcome_not_shared_or_cached(tmp_path):
    engine = make_engine(tmp_path, ELIGIBLE_READ + """
@id("overflowing-forbid")
forbid (principal, action == Action::"request", resource)
when { context.duration_s * 9223372036854775807 > 0 };
""")
    full = PolicyEngine(engine.bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=0, key_on_reads=False)
    inputs = [make_input(), make_input(principal="bob")]
    decisions = engine.decide_batch(inputs)
    assert [decision.effect for decision in decisions] == ["deny", "deny"]
    assert all(decision.reasons[0].startswith("policy evaluation failed:") for decision in decisions)
    assert decisions == full.decide_batch(inputs)
    assert engine.cache_stats().size == 0


def test_grid_same_as_full_keys(default_bundle):
    inputs = [
        make_input(
            principal=f"user-{index}", resource=f"postgres://prod/t{index % 7}", role=role, risk_score=risk,
            device_posture=posture, duration_s=duration_s, hour_utc=index % 24,
            principal_attributes={"groups": groups, "on_call": index % 5 == 0},
            resource_attributes={"owner_team": "payments", "sensitivity": sensitivity},
        )
        for index, (role, risk, posture, duration_s, groups, sensitivity) in enumerate(
            (role, risk, posture, duration_s, groups, sensitivity)
            for role in ("read", "write", "admin")
            for risk in (0.0, 29.9, 30.0, 49.9, 50.0, 94.9, 95.0, 100.0)
            for posture in ("managed", "unmanaged", "unknown")
            for duration_s in (900, 3601, 14401, 28801)
            for groups in ([], ["payments"], ["sre"], ["engineering"])
            for sensitivity in ("low", "high", "critical", "unknown")
        )
    ]
    shared = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S)
    full = PolicyEngine(default_bundle, global_max_duration_s=GLOBAL_MAX_S, cache_size=0, key_on_reads=False)
    decisions = [decision for start in range(0, len(inputs), 500) for decision in shared.decide_batch(inputs[start : start + 500])]
    assert decisions == full.decide_batch(inputs)
    assert {decision.effect for decision in decisions} == {"allow", "review", "deny"}
    # Durations and risk scores in the same interval share evaluations.
    assert shared.cache_stats().misses <= len(inputs) / 4


def test_replayed_rows_same_as_full_keys():
    from jitgate.replay import DEFAULT_LOG_PATH
    from loadtests import inprocess, workload

    if not DEFAULT_LOG_PATH.is_file():
        pytest.skip(f"{DEFAULT_LOG_PATH} is not present")
    from cluster.catalogs import load_catalogs
    from cluster.settings import Settings

    settings = Settings(configs_dir=REPO / "configs")
    _, catalog, _ = load_catalogs(settings)
    items = inprocess.decision_items(workload.load_plans(limit=3000), catalog, now_ms=1_700_000_000_000)
    inputs = inprocess.policy_inputs(str(settings.risk_model_path), items)
    bundle = PolicyBundle.load(settings.policy_dir)
    shared = PolicyEngine(bundle, global_max_duration_s=settings.max_duration_s)
    full = PolicyEngine(bundle, global_max_duration_s=settings.max_duration_s, cache_size=0, key_on_reads=False)

    decisions, expected = [], []
    for start in range(0, len(inputs), 1000):
        decisions.extend(shared.decide_batch(inputs[start : start + 1000]))
        expected.extend(full.decide_batch(inputs[start : start + 1000]))
    assert decisions == expected
    assert set(Counter(decision.effect for decision in decisions)) == {"allow", "review", "deny"}
    assert shared.cache_stats().hits > len(inputs) / 2
