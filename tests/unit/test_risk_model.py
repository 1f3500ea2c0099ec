"""Approval model: CSV loading, encoding, training, persistence and held-out AUC."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from actors.risk import model as risk_model
from actors.risk.model import (
    COLUMNS,
    MISSING_ID,
    RiskDataError,
    RiskModel,
    fit,
    holdout_indices,
    load_labelled_csv,
    parse_id,
    parse_ids,
    roc_auc,
    train,
)

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MODEL = REPO / "configs" / "risk" / "model.npz"
DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "amazon-access"
HEADER = "ACTION," + ",".join(name.upper() for name in COLUMNS)


def write_synthetic_csv(path: Path, n_rows: int = 1500, seed: int = 3) -> Path:
    """Write a labelled CSV where denials depend on resource and manager, as in train.csv."""
    rng = np.random.default_rng(seed)
    table = np.empty((n_rows, 1 + len(COLUMNS)), dtype=np.int64)
    for j in range(len(COLUMNS)):
        table[:, 1 + j] = 1000 * (j + 1) + rng.integers(0, 12 + 5 * j, n_rows)
    risky = (table[:, 1] % 3 == 0) | ((table[:, 2] % 4 == 0) & (table[:, 5] % 2 == 0))
    deny_probability = np.where(risky, 0.8, 0.03)
    table[:, 0] = (rng.random(n_rows) >= deny_probability).astype(np.int64)
    lines = [HEADER, *(",".join(str(v) for v in row) for row in table.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory) -> Path:
    return write_synthetic_csv(tmp_path_factory.mktemp("risk") / "train.csv")


@pytest.fixture(scope="module")
def small_model(synthetic_csv) -> RiskModel:
    features = (*risk_model.SINGLE_FEATURES, (0, 1), (1, 4))
    return train(synthetic_csv, seed=11, features=features).model


def test_parse_id_accepts_integers_and_digit_strings():
    assert parse_id(12345) == 12345
    assert parse_id("12345") == 12345
    assert parse_id(" 42 ") == 42
    assert parse_id(np.int64(7)) == 7


def test_parse_id_maps_other_values_to_missing():
    for value in ("postgres://prod/orders", "", "-5", "1e3", "١٢", None, True, 3.0, ["1"], "9" * 40):
        assert parse_id(value) == MISSING_ID, value


@pytest.mark.parametrize(
    "values",
    [
        ["12345", "7", "0"],
        ["12345", " 42 "],
        ["12345", ""],
        ["12345", "-5", "1_000"],
        ["12345", "١٢"],
        ["12345", "4611686018427387904"],
        ["12345", "9" * 40],
        ["12345", 7, None, True],
        [],
    ],
)
def test_parse_ids_same_as_parse_id(values):
    assert parse_ids(values).tolist() == [parse_id(value) for value in values]
    assert parse_ids(values).dtype == np.int64


def test_encode_unknown_values_use_unknown_slot(small_model):
    columns = {name: np.array([-1, 10**12], dtype=np.int64) for name in COLUMNS}
    index = small_model.encode_columns(columns)
    expected = np.broadcast_to(small_model.offsets.astype(np.int32), index.shape)
    np.testing.assert_array_equal(index, expected)


def test_encode_missing_column_uses_unknown_slot(small_model):
    known = small_model.column_values[0][:3]
    index = small_model.encode_columns({"resource": known})
    assert index.shape == (3, small_model.n_features)
    resource_feature = small_model.features.index((0,))
    assert (index[:, resource_feature] > small_model.offsets[resource_feature]).all()
    mgr_feature = small_model.features.index((1,))
    assert (index[:, mgr_feature] == small_model.offsets[mgr_feature]).all()


def test_encode_known_values_get_distinct_slots(small_model):
    values = small_model.column_values[0]
    index = small_model.encode_columns({"resource": values})
    resource_slots = index[:, small_model.features.index((0,))]
    assert np.unique(resource_slots).size == values.size
    assert (resource_slots > small_model.offsets[0]).all()
    assert (index >= 0).all()
    assert (index < small_model.n_slots).all()


def test_encode_rows_matches_encode_columns(small_model):
    rng = np.random.default_rng(5)
    columns = {name: rng.choice(np.r_[values, [-7, 999_999]], 50) for name, values in zip(COLUMNS, small_model.column_values)}
    rows = [{name: str(int(columns[name][i])) for name in COLUMNS} for i in range(50)]
    for i in range(50):
        for name in COLUMNS:
            if columns[name][i] < 0:
                rows[i][name] = "postgres://prod/orders"
    columns = {name: np.where(values < 0, MISSING_ID, values) for name, values in columns.items()}
    np.testing.assert_array_equal(small_model.encode_rows(rows), small_model.encode_columns(columns))


def test_encode_rows_string_resource_is_unknown(small_model):
    known = {name: str(int(values[0])) for name, values in zip(COLUMNS, small_model.column_values)}
    with_url = dict(known, resource="postgres://prod/orders")
    index = small_model.encode_rows([known, with_url, {}])
    resource_feature = small_model.features.index((0,))
    assert index[0, resource_feature] != small_model.offsets[resource_feature]
    assert index[1, resource_feature] == small_model.offsets[resource_feature]
    np.testing.assert_array_equal(index[2], small_model.offsets)


def test_encode_columns_rejects_bad_input(small_model):
    with pytest.raises(ValueError, match="unknown column"):
        small_model.encode_columns({"department": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="differ in length"):
        small_model.encode_columns({"resource": np.zeros(2, np.int64), "mgr_id": np.zeros(3, np.int64)})
    with pytest.raises(TypeError, match="integer array"):
        small_model.encode_columns({"resource": np.array(["1", "2"])})


def test_probability_matches_python_reference(small_model):
    rng = np.random.default_rng(9)
    index = rng.integers(0, small_model.n_slots, (5000, small_model.n_features)).astype(np.int32)
    vectorized = small_model.approval_probability(index)
    reference = np.array(small_model.approval_probability_python(index.tolist()))
    assert vectorized.dtype == np.float32
    np.testing.assert_allclose(vectorized, reference, rtol=1e-5, atol=1e-6)


def test_train_same_seed_same_weights(synthetic_csv):
    first = train(synthetic_csv, seed=11).model
    second = train(synthetic_csv, seed=11).model
    np.testing.assert_array_equal(first.weights, second.weights)
    assert first.bias == second.bias
    assert first.version == second.version


def test_train_other_seed_other_split(synthetic_csv):
    first = train(synthetic_csv, seed=11).model
    other = train(synthetic_csv, seed=12).model
    assert first.version != other.version


def test_train_learns_synthetic_rule(synthetic_csv):
    result = train(synthetic_csv, seed=11)
    assert result.n_train + result.n_test == 1500
    assert result.n_test == 300
    assert result.holdout_auc > 0.75


def test_save_load_roundtrip(small_model, tmp_path):
    path = tmp_path / "model.npz"
    small_model.save(path)
    loaded = RiskModel.load(path)
    assert loaded.version == small_model.version
    assert loaded.features == small_model.features
    np.testing.assert_array_equal(loaded.weights, small_model.weights)
    np.testing.assert_array_equal(loaded.mean_weights, small_model.mean_weights)
    columns = {name: values[np.arange(20) % values.size] for name, values in zip(COLUMNS, small_model.column_values)}
    np.testing.assert_array_equal(loaded.encode_columns(columns), small_model.encode_columns(columns))


def test_version_is_short_and_prefixed(small_model):
    assert small_model.version.startswith("amazon-lr-")
    assert len(small_model.version) == len("amazon-lr-") + 12


def test_holdout_indices_split_80_20():
    train_rows, test_rows = holdout_indices(1001, seed=20261204)
    assert test_rows.size == 200
    assert train_rows.size == 801
    assert np.intersect1d(train_rows, test_rows).size == 0
    np.testing.assert_array_equal(np.sort(np.r_[train_rows, test_rows]), np.arange(1001))
    again_train, again_test = holdout_indices(1001, seed=20261204)
    np.testing.assert_array_equal(again_test, test_rows)


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 10, 300).astype(float)
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    wins = 0.0
    for positive, negative in itertools.product(positives, negatives):
        if positive > negative:
            wins += 1.0
        elif positive == negative:
            wins += 0.5
    assert roc_auc(labels, scores) == pytest.approx(wins / (positives.size * negatives.size))


def test_roc_auc_extremes():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.1, 0.2])


def test_load_csv_missing_file(tmp_path):
    with pytest.raises(RiskDataError, match="missing.csv: cannot open"):
        load_labelled_csv(tmp_path / "missing.csv")


def test_load_csv_missing_action_column(tmp_path):
    path = tmp_path / "requests.csv"
    path.write_text("id," + HEADER.removeprefix("ACTION,") + "\n1,1,2,3,4,5,6,7,8,9\n")
    with pytest.raises(RiskDataError, match=r"requests.csv: line 1: missing column\(s\) ACTION"):
        load_labelled_csv(path)


def test_load_csv_non_integer_value(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "\n1,1,2,3,4,5,6,7,8,9\n0,1,abc,3,4,5,6,7,8,9\n")
    with pytest.raises(RiskDataError, match=r"bad.csv: line 3: column MGR_ID: expected an integer, got 'abc'"):
        load_labelled_csv(path)


def test_load_csv_label_out_of_range(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "\n1,1,2,3,4,5,6,7,8,9\n2,1,2,3,4,5,6,7,8,9\n")
    with pytest.raises(RiskDataError, match="line 3: column ACTION: expected 0 or 1, got 2"):
        load_labelled_csv(path)


def test_load_csv_short_row(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text(HEADER + "\n1,1,2,3\n")
    with pytest.raises(RiskDataError, match="line 2: column ROLE_ROLLUP_2: missing value"):
        load_labelled_csv(path)


def test_fit_unknown_slot_learns_from_rare_values():
    # Rare resources (seen once) are all denied: their shared unknown slot must learn that.
    n_rows = 400
    resource = np.r_[np.repeat(np.arange(10), 30), 1000 + np.arange(100)]
    labels = np.r_[np.ones(300, np.int8), np.zeros(100, np.int8)]
    columns = {name: np.zeros(n_rows, np.int64) for name in COLUMNS}
    columns["resource"] = resource
    model, _ = fit(risk_model.LabelledData(labels, columns), features=risk_model.SINGLE_FEATURES)
    probability = model.approval_probability(model.encode_columns({"resource": np.array([5, 555_555])}))
    assert probability[0] > 0.9
    assert probability[1] < 0.5


@pytest.mark.skipif(not (DATA_DIR / "train.csv").is_file(), reason=f"Amazon access data not found at {DATA_DIR}")
def test_committed_model_holdout_auc():
    model = RiskModel.load(COMMITTED_MODEL)
    data = load_labelled_csv(DATA_DIR / "train.csv")
    _, test_rows = holdout_indices(len(data))
    held_out = data.take(test_rows)
    probability = model.approval_probability(model.encode_columns(held_out.columns))
    assert roc_auc(held_out.labels, probability) >= 0.88
