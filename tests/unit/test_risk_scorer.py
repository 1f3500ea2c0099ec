"""RiskScorer class without Ray: batching of concurrent calls, request rates and item checks."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import numpy as np
import pytest

from actors.risk.actor import RiskScorer
from actors.risk.model import COLUMNS, RiskModel

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MODEL = REPO / "configs" / "risk" / "model.npz"
NOW_MS = 1_780_000_000_000


def make_item(principal: str = "alice", **overrides) -> dict:
    item = {
        "principal": principal,
        "principal_attributes": {"mgr_id": "1540", "role_rollup_1": "117961", "role_deptname": "123125"},
        "resource": "17183",
        "role": "read",
        "duration_s": 3600,
        "device_posture": "managed",
        "hour_utc": 10,
        "now_ms": NOW_MS,
    }
    item.update(overrides)
    return item


@pytest.fixture
def scorer() -> RiskScorer:
    return RiskScorer(str(COMMITTED_MODEL))


def test_score_result_shape(scorer):
    results = asyncio.run(scorer.score([make_item(), make_item("bob", device_posture="unmanaged")]))
    assert len(results) == 2
    for result in results:
        assert set(result) == {"risk_score", "factors", "model_version"}
        assert 0.0 <= result["risk_score"] <= 100.0
        assert result["risk_score"] == round(result["risk_score"], 1)
        assert result["model_version"] == scorer.version()
        for factor in result["factors"]:
            assert set(factor) == {"name", "weight"}
            assert factor["weight"] > 0
    assert results[1]["risk_score"] > results[0]["risk_score"]
    assert results[1]["factors"][0]["name"] == "device_posture"


def test_score_matches_pure_scoring(scorer):
    from actors.risk.scoring import RiskContext, score_batch

    model = RiskModel.load(COMMITTED_MODEL)
    item = make_item(hour_utc=22, duration_s=7200)
    result = asyncio.run(scorer.score([item]))[0]
    attributes = dict(item["principal_attributes"], resource=item["resource"])
    context = RiskContext(
        device_posture=np.array([0]),
        hour_utc=np.array([22]),
        duration_s=np.array([7200]),
        usual_duration_s=np.array([3600]),
        recent_requests=np.array([0]),
    )
    expected = score_batch(model, model.encode_rows([attributes]), context).risk_score[0]
    assert result["risk_score"] == pytest.approx(round(float(expected), 1))


def test_concurrent_calls_share_batches(scorer):
    async def run() -> list[list[dict]]:
        calls = [scorer.score([make_item(f"user-{i}")]) for i in range(200)]
        return await asyncio.gather(*calls)

    results = asyncio.run(run())
    assert len(results) == 200
    assert all(len(result) == 1 for result in results)
    stats = scorer.stats()
    assert stats["rows_scored"] == 200
    assert stats["batches_scored"] < 200


def test_batches_respect_max_rows():
    scorer = RiskScorer(str(COMMITTED_MODEL), max_batch_rows=10)

    async def run() -> list[list[dict]]:
        return await asyncio.gather(*(scorer.score([make_item(f"user-{i}")] * 3) for i in range(20)))

    results = asyncio.run(run())
    assert [len(result) for result in results] == [3] * 20
    # Calls are never split, so a batch contains at most 4 calls of 3 rows.
    assert scorer.stats()["batches_scored"] >= 5


def test_request_rate_raises_score(scorer):
    async def run() -> list[float]:
        scores = []
        for i in range(6):
            result = await scorer.score([make_item("burst", now_ms=NOW_MS + i * 1000)])
            scores.append(result[0]["risk_score"])
        return scores

    scores = asyncio.run(run())
    assert scores == sorted(scores)
    assert scores[-1] > scores[0]


def test_request_rate_window_expires(scorer):
    async def run() -> tuple[dict, dict]:
        await scorer.score([make_item("carol", now_ms=NOW_MS + i) for i in range(5)])
        busy = (await scorer.score([make_item("carol", now_ms=NOW_MS + 60_000)]))[0]
        later = (await scorer.score([make_item("carol", now_ms=NOW_MS + 60_000 + 10 * 60 * 1000)]))[0]
        return busy, later

    busy, later = asyncio.run(run())
    assert "request_rate" in [factor["name"] for factor in busy["factors"]]
    # Only the request at +60 s is still inside the 10-minute window.
    assert later["risk_score"] < busy["risk_score"]


def test_string_resource_scores(scorer):
    result = asyncio.run(scorer.score([make_item(resource="postgres://prod/orders", principal_attributes={})]))
    assert 0.0 <= result[0]["risk_score"] <= 100.0


def test_empty_call_returns_empty(scorer):
    assert asyncio.run(scorer.score([])) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"principal": ""}, "field 'principal'"),
        ({"resource": None}, "field 'resource'"),
        ({"duration_s": 0}, "field 'duration_s': expected an integer >= 1"),
        ({"duration_s": "3600"}, "field 'duration_s'"),
        ({"hour_utc": 24}, "field 'hour_utc': expected an integer in 0..23"),
        ({"hour_utc": True}, "field 'hour_utc'"),
        ({"now_ms": -1}, "field 'now_ms'"),
        ({"device_posture": "jailbroken"}, "field 'device_posture'"),
        ({"principal_attributes": ["mgr_id"]}, "field 'principal_attributes'"),
        ({"principal_attributes": {"mgr_id": 1.5}}, "principal_attributes.mgr_id"),
        ({"principal_attributes": {"role_code": "x" * 1000}}, "principal_attributes.role_code"),
        ({"usual_duration_s": 0}, "field 'usual_duration_s'"),
    ],
)
def test_invalid_item_rejected(scorer, overrides, message):
    items = [make_item(), make_item(**overrides)]
    with pytest.raises(ValueError, match=f"item 1: .*{message}"):
        asyncio.run(scorer.score(items))
    # A rejected call counts no requests.
    assert scorer.stats()["principals_tracked"] == 0


def test_score_columns_bulk(scorer):
    model = RiskModel.load(COMMITTED_MODEL)
    columns = {name: values[:50] for name, values in zip(COLUMNS, model.column_values) if values.size >= 50}
    n_rows = 50
    context = {
        "device_posture": np.zeros(n_rows, np.int8),
        "hour_utc": np.full(n_rows, 12),
        "duration_s": np.full(n_rows, 3600),
        "usual_duration_s": np.full(n_rows, 3600),
        "recent_requests": np.zeros(n_rows),
    }
    fast = asyncio.run(scorer.score_columns(columns, context))
    assert fast["risk_score"].shape == (n_rows,)
    assert fast["model_version"] == scorer.version()
    detailed = asyncio.run(scorer.score_columns(columns, context, with_factors=True))
    np.testing.assert_allclose(detailed["risk_score"], fast["risk_score"], atol=1e-3)
    assert detailed["factor_index"].shape == (n_rows, 3)
    assert len(detailed["factor_names"]) == model.n_features + 4


def test_scorer_survives_new_event_loop(scorer):
    first = asyncio.run(scorer.score([make_item("erin")]))
    second = asyncio.run(scorer.score([make_item("erin", now_ms=NOW_MS + 1000)]))
    assert len(first) == len(second) == 1
    assert second[0]["risk_score"] > first[0]["risk_score"]


def as_columns(items: list[dict]) -> dict:
    """Turn `score` items into the columns of `score_requests`; absent attributes become None."""
    names = sorted({name for item in items for name in item["principal_attributes"]})
    columns = {name: [item[name] for item in items] for name in items[0] if name != "principal_attributes"}
    columns["principal_attributes"] = {name: [item["principal_attributes"].get(name) for item in items] for name in names}
    return columns


def mixed_items() -> list[dict]:
    return [
        make_item(),
        make_item("bob", device_posture="unmanaged", hour_utc=23, duration_s=14400),
        make_item("carol", resource="postgres://prod/orders", principal_attributes={"mgr_id": 1540}),
        make_item("dave", principal_attributes={}),
        make_item("alice", now_ms=NOW_MS + 1000, principal_attributes={"role_code": " 117880", "mgr_id": "x"}),
    ]


def test_score_requests_same_as_score():
    expected = asyncio.run(RiskScorer(str(COMMITTED_MODEL)).score(mixed_items()))
    columnar = RiskScorer(str(COMMITTED_MODEL))
    result = asyncio.run(columnar.score_requests(as_columns(mixed_items())))
    assert result["risk_score"] == [row["risk_score"] for row in expected]
    assert result["factors"] == [row["factors"] for row in expected]
    assert result["model_version"] == columnar.version()
    assert columnar.stats()["rows_scored"] == 5


def test_score_requests_packed_same_as_score_requests():
    expected = asyncio.run(RiskScorer(str(COMMITTED_MODEL)).score_requests(as_columns(mixed_items())))
    packed = asyncio.run(RiskScorer(str(COMMITTED_MODEL)).score_requests_packed(pickle.dumps(as_columns(mixed_items()))))
    assert pickle.loads(packed) == expected


def test_score_requests_packed_names_invalid_request(scorer):
    columns = as_columns([make_item(), make_item("bob", duration_s=0)])
    with pytest.raises(ValueError, match="item 1: field 'duration_s'"):
        asyncio.run(scorer.score_requests_packed(pickle.dumps(columns)))


def test_score_requests_usual_duration_column(scorer):
    items = [make_item(usual_duration_s=600), make_item("bob", usual_duration_s=86400)]
    expected = asyncio.run(RiskScorer(str(COMMITTED_MODEL)).score(items))
    result = asyncio.run(scorer.score_requests(as_columns(items)))
    assert result["risk_score"] == [row["risk_score"] for row in expected]


def test_score_requests_empty(scorer):
    columns = {name: [] for name in ("principal", "resource", "role", "duration_s", "device_posture", "hour_utc", "now_ms")}
    assert asyncio.run(scorer.score_requests(columns)) == {
        "risk_score": [], "factors": [], "model_version": scorer.version(),
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"principal": ""}, "field 'principal'"),
        ({"duration_s": 0}, "field 'duration_s': expected an integer >= 1"),
        ({"hour_utc": True}, "field 'hour_utc'"),
        ({"device_posture": "jailbroken"}, "field 'device_posture'"),
        ({"principal_attributes": {"mgr_id": 1.5}}, "principal_attributes.mgr_id"),
        ({"principal_attributes": {"role_code": "x" * 1000}}, "principal_attributes.role_code"),
        ({"usual_duration_s": 0}, "field 'usual_duration_s'"),
    ],
)
def test_score_requests_names_invalid_request(scorer, overrides, message):
    items = [make_item(usual_duration_s=3600), make_item(**{"usual_duration_s": 3600, **overrides})]
    with pytest.raises(ValueError, match=f"item 1: .*{message}"):
        asyncio.run(scorer.score_requests(as_columns(items)))
    assert scorer.stats()["principals_tracked"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda columns: columns.pop("role"), "missing column"),
        (lambda columns: columns["hour_utc"].append(3), "same length"),
        (lambda columns: columns["principal_attributes"]["mgr_id"].pop(), "same length"),
        (lambda columns: columns.update(principal_attributes=["mgr_id"]), "dict of columns"),
    ],
)
def test_score_requests_rejects_bad_columns(scorer, change, message):
    columns = as_columns([make_item(), make_item("bob")])
    change(columns)
    with pytest.raises(ValueError, match=message):
        asyncio.run(scorer.score_requests(columns))
