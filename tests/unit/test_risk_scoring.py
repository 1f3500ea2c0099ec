"""Risk score: context signals, score range, factors and the recent-request window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actors.risk.model import COLUMNS, RiskModel
from actors.risk.scoring import (
    CONTEXT_FACTORS,
    DEVICE_MANAGED,
    DEVICE_UNKNOWN,
    DEVICE_UNMANAGED,
    TOP_FACTORS,
    RecentRequestCounter,
    RiskContext,
    context_contributions,
    score_batch,
    top_contributions,
)

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MODEL = REPO / "configs" / "risk" / "model.npz"


@pytest.fixture(scope="module")
def model() -> RiskModel:
    return RiskModel.load(COMMITTED_MODEL)


@pytest.fixture(scope="module")
def index(model) -> np.ndarray:
    # Rows built from known values of every column, plus one row of unknown values.
    rng = np.random.default_rng(4)
    columns = {name: rng.choice(values, 199) for name, values in zip(COLUMNS, model.column_values)}
    columns = {name: np.r_[values, [-1]] for name, values in columns.items()}
    return model.encode_columns(columns)


def make_context(n_rows: int, **overrides) -> RiskContext:
    fields = {
        "device_posture": np.full(n_rows, DEVICE_MANAGED),
        "hour_utc": np.full(n_rows, 10),
        "duration_s": np.full(n_rows, 3600),
        "usual_duration_s": np.full(n_rows, 3600),
        "recent_requests": np.zeros(n_rows, dtype=np.int64),
    }
    for name, value in overrides.items():
        fields[name] = np.broadcast_to(np.asarray(value), (n_rows,)).copy()
    return RiskContext(**fields)


def test_score_range_0_to_100(model, index):
    n_rows = index.shape[0]
    worst = make_context(n_rows, device_posture=DEVICE_UNMANAGED, hour_utc=3, duration_s=10**9, recent_requests=10**6)
    best = make_context(n_rows, duration_s=1)
    for context in (worst, best, make_context(n_rows)):
        scores = score_batch(model, index, context).risk_score
        assert scores.dtype == np.float32
        assert scores.shape == (n_rows,)
        assert (scores >= 0.0).all()
        assert (scores <= 100.0).all()


def test_score_is_denial_probability_without_context(model, index):
    scores = score_batch(model, index, make_context(index.shape[0]))
    np.testing.assert_allclose(scores.risk_score, 100.0 * (1.0 - scores.approval_probability), atol=1e-3)


def test_without_factors_gives_same_scores(model, index):
    context = make_context(index.shape[0], device_posture=DEVICE_UNKNOWN, hour_utc=22)
    with_factors = score_batch(model, index, context)
    fast = score_batch(model, index, context, with_factors=False)
    np.testing.assert_allclose(fast.risk_score, with_factors.risk_score, rtol=1e-5, atol=1e-4)
    assert fast.factor_index is None
    with pytest.raises(ValueError, match="with_factors=False"):
        fast.factors(0)


def test_context_as_mapping(model, index):
    context = make_context(index.shape[0], hour_utc=5)
    from_mapping = score_batch(model, index, context.__dict__)
    np.testing.assert_array_equal(from_mapping.risk_score, score_batch(model, index, context).risk_score)


def test_unmanaged_device_raises_score(model, index):
    n_rows = index.shape[0]
    managed = score_batch(model, index, make_context(n_rows, device_posture=DEVICE_MANAGED)).risk_score
    unknown = score_batch(model, index, make_context(n_rows, device_posture=DEVICE_UNKNOWN)).risk_score
    unmanaged = score_batch(model, index, make_context(n_rows, device_posture=DEVICE_UNMANAGED)).risk_score
    assert (unknown > managed).all()
    assert (unmanaged > unknown).all()


def test_off_hours_raise_score(model, index):
    n_rows = index.shape[0]
    business = score_batch(model, index, make_context(n_rows, hour_utc=7)).risk_score
    for hour in (0, 6, 19, 23):
        off_hours = score_batch(model, index, make_context(n_rows, hour_utc=hour)).risk_score
        assert (off_hours > business).all(), hour
    for hour in (8, 12, 18):
        np.testing.assert_array_equal(score_batch(model, index, make_context(n_rows, hour_utc=hour)).risk_score, business)


def test_longer_duration_raises_score(model, index):
    n_rows = index.shape[0]
    previous = None
    for duration_s in (900, 3600, 4 * 3600, 12 * 3600):
        scores = score_batch(model, index, make_context(n_rows, duration_s=duration_s)).risk_score
        if previous is not None:
            assert (scores > previous).all(), duration_s
        previous = scores


def test_duration_effect_is_capped(model, index):
    n_rows = index.shape[0]
    at_cap = score_batch(model, index, make_context(n_rows, duration_s=16 * 3600)).risk_score
    beyond = score_batch(model, index, make_context(n_rows, duration_s=1000 * 3600)).risk_score
    np.testing.assert_array_equal(at_cap, beyond)


def test_more_recent_requests_raise_score(model, index):
    n_rows = index.shape[0]
    previous = None
    for recent in (0, 1, 5, 50):
        scores = score_batch(model, index, make_context(n_rows, recent_requests=recent)).risk_score
        if previous is not None:
            assert (scores > previous).all(), recent
        previous = scores


def test_factors_sorted_and_positive(model, index):
    context = make_context(
        index.shape[0], device_posture=DEVICE_UNMANAGED, hour_utc=2, duration_s=8 * 3600, recent_requests=3
    )
    scores = score_batch(model, index, context)
    assert scores.factor_index.shape == (index.shape[0], TOP_FACTORS)
    for row in range(index.shape[0]):
        factors = scores.factors(row)
        weights = [weight for _, weight in factors]
        assert weights == sorted(weights, reverse=True)
        assert all(weight > 0 for weight in weights)
        assert all(name in scores.factor_names for name, _ in factors)
        assert len(factors) <= TOP_FACTORS


def test_factors_name_dominant_context_signal(model, index):
    # An unmanaged device (+1.5) outweighs off hours (+0.7), which outweighs 2 requests (+0.44).
    context = make_context(index.shape[0], device_posture=DEVICE_UNMANAGED, hour_utc=23, recent_requests=2)
    scores = score_batch(model, index, context)
    rows_with_device = 0
    for row in range(index.shape[0]):
        factors = dict(scores.factors(row))
        names = list(factors)
        if "device_posture" in names:
            rows_with_device += 1
            assert factors["device_posture"] == pytest.approx(1.5)
            if "off_hours" in names:
                assert names.index("device_posture") < names.index("off_hours")
    # Only rows with three model features above +1.5 can push the device out of the top three.
    assert rows_with_device >= 0.9 * index.shape[0]


def test_factors_cover_model_features(model, index):
    scores = score_batch(model, index, make_context(index.shape[0]))
    names = {name for row in scores.factor_lists() for name, _ in row}
    assert names
    assert names <= set(model.feature_names)


def test_feature_contributions_add_up_to_logit(model, index):
    # Baseline + feature contributions = denial logit, so factors explain the score.
    weights = model.weights[index]
    contributions = model.mean_weights - weights
    baseline = -(model.bias + model.mean_weights.sum())
    denial_logit = baseline + contributions.sum(axis=1)
    scores = score_batch(model, index, make_context(index.shape[0]))
    expected = 100.0 / (1.0 + np.exp(-denial_logit))
    np.testing.assert_allclose(scores.risk_score, expected, atol=1e-3)


def test_context_contributions_values():
    context = make_context(3, device_posture=[0, 1, 2], hour_utc=[10, 19, 6], duration_s=[3600, 7200, 900])
    out = context_contributions(context, 3)
    assert out.shape == (3, len(CONTEXT_FACTORS))
    np.testing.assert_allclose(out[:, 0], [0.0, 1.5, 0.75])
    np.testing.assert_allclose(out[:, 1], [0.0, 0.7, 0.7])
    np.testing.assert_allclose(out[:, 2], [0.0, 0.5, -1.0])
    np.testing.assert_allclose(out[:, 3], [0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device_posture", 3, "'device_posture': row 0: expected a value in 0..2"),
        ("hour_utc", 24, "'hour_utc': row 0: expected a value in 0..23"),
        ("duration_s", 0, "'duration_s': row 0"),
        ("usual_duration_s", -5, "'usual_duration_s': row 0"),
        ("recent_requests", -1, "'recent_requests': row 0"),
        ("duration_s", np.nan, "'duration_s': row 0"),
    ],
)
def test_context_out_of_range_rejected(model, field, value, message):
    index = model.encode_columns({"resource": np.zeros(2, np.int64)})
    context = make_context(2, **{field: value})
    with pytest.raises(ValueError, match=message):
        score_batch(model, index, context)


def test_context_wrong_length_rejected(model):
    index = model.encode_columns({"resource": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        score_batch(model, index, make_context(3))


def test_context_missing_field_rejected(model):
    index = model.encode_columns({"resource": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="missing"):
        score_batch(model, index, {"hour_utc": np.zeros(2)})


def test_top_contributions_order():
    values = np.array([[0.1, 0.5, -1.0, 0.3, 0.2], [5.0, 4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    positions, weights = top_contributions(values, 3)
    np.testing.assert_array_equal(positions, [[1, 3, 4], [0, 1, 2]])
    np.testing.assert_allclose(weights, [[0.5, 0.3, 0.2], [5.0, 4.0, 3.0]])


def test_top_contributions_fewer_columns_than_top():
    positions, weights = top_contributions(np.array([[0.2, 0.9]], dtype=np.float32), 3)
    np.testing.assert_array_equal(positions, [[1, 0]])


def test_rate_window_counts_earlier_requests():
    counter = RecentRequestCounter(window_ms=600_000)
    start_ms = 1_700_000_000_000
    assert counter.record("alice", start_ms) == 0
    assert counter.record("alice", start_ms + 1_000) == 1
    assert counter.record("alice", start_ms + 2_000) == 2
    assert counter.record("bob", start_ms + 2_000) == 0


def test_rate_window_forgets_old_requests():
    counter = RecentRequestCounter(window_ms=600_000)
    start_ms = 1_700_000_000_000
    counter.record("alice", start_ms)
    counter.record("alice", start_ms + 300_000)
    # At exactly one window later the first request has left the window.
    assert counter.record("alice", start_ms + 600_000) == 1
    assert counter.record("alice", start_ms + 2_000_000) == 0


def test_rate_window_drops_idle_principals():
    counter = RecentRequestCounter(window_ms=1_000)
    for i in range(100):
        counter.record(f"user-{i}", 0)
    assert len(counter) == 100
    counter.record("late", 5_000)
    assert len(counter) == 1


def test_rate_window_bounds_principals():
    counter = RecentRequestCounter(window_ms=600_000, max_principals=10)
    for i in range(50):
        counter.record(f"user-{i}", 1_000 + i)
    assert len(counter) == 10
    # The least recently seen principals were dropped first.
    assert counter.record("user-0", 2_000) == 0
    assert counter.record("user-49", 2_000) == 1


def test_rate_window_count_saturates():
    counter = RecentRequestCounter(window_ms=600_000, max_events_per_principal=5)
    counts = [counter.record("ci-bot", 1_000 + i) for i in range(10)]
    assert counts == [0, 1, 2, 3, 4, 5, 5, 5, 5, 5]


def test_rate_window_rejects_bad_limits():
    with pytest.raises(ValueError, match="must be positive"):
        RecentRequestCounter(window_ms=0)
