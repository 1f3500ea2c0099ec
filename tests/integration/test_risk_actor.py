"""RiskScorer as a Ray actor: concurrent calls, batching and request rates."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from actors.risk.actor import RiskScorer  # noqa: E402
from actors.risk.model import RiskModel  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MODEL = REPO / "configs" / "risk" / "model.npz"
NOW_MS = 1_780_000_000_000


def make_item(principal: str, **overrides) -> dict:
    item = {
        "principal": principal,
        "principal_attributes": {"mgr_id": "1540", "role_rollup_1": "117961", "role_title": "118536"},
        "resource": "17183",
        "role": "read",
        "duration_s": 3600,
        "device_posture": "managed",
        "hour_utc": 10,
        "now_ms": NOW_MS,
    }
    item.update(overrides)
    return item


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture
def scorer(ray_cluster):
    actor = (
        ray.remote(RiskScorer)
        .options(max_restarts=-1, max_task_retries=-1, num_cpus=0)
        .remote(str(COMMITTED_MODEL))
    )
    yield actor
    ray.kill(actor)


def test_actor_reports_model_version(scorer):
    assert ray.get(scorer.version.remote(), timeout=60) == RiskModel.load(COMMITTED_MODEL).version


def test_actor_concurrent_calls(scorer):
    postures = ("managed", "unmanaged", "unknown")
    calls = [
        scorer.score.remote([make_item(f"user-{i}", device_posture=postures[i % 3]), make_item(f"user-{i}-b")])
        for i in range(300)
    ]
    results = ray.get(calls, timeout=120)
    assert len(results) == 300
    for i, result in enumerate(results):
        assert len(result) == 2
        for row in result:
            assert 0.0 <= row["risk_score"] <= 100.0
            assert isinstance(row["factors"], list)
        first_names = [factor["name"] for factor in result[0]["factors"]]
        if postures[i % 3] == "unmanaged":
            assert "device_posture" in first_names
    # Same request, different posture: unmanaged scores higher than managed.
    assert results[1][0]["risk_score"] > results[0][0]["risk_score"]
    stats = ray.get(scorer.stats.remote(), timeout=60)
    assert stats["rows_scored"] == 600
    assert stats["batches_scored"] <= 300


def test_actor_counts_requests_per_principal(scorer):
    scores = []
    for i in range(5):
        result = ray.get(scorer.score.remote([make_item("ci-bot", now_ms=NOW_MS + i * 1000)]), timeout=60)
        scores.append(result[0]["risk_score"])
    assert scores == sorted(scores)
    assert scores[-1] > scores[0]
    after_window = ray.get(scorer.score.remote([make_item("ci-bot", now_ms=NOW_MS + 3_600_000)]), timeout=60)
    assert after_window[0]["risk_score"] == scores[0]


def test_actor_rejects_invalid_item(scorer):
    with pytest.raises(ray.exceptions.RayTaskError, match="field 'hour_utc'"):
        ray.get(scorer.score.remote([make_item("dave", hour_utc=25)]), timeout=60)
    # The actor keeps serving after a rejected call.
    result = ray.get(scorer.score.remote([make_item("dave")]), timeout=60)
    assert len(result) == 1
