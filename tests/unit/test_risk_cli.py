"""`jitgate risk train` and `jitgate risk evaluate` functions: output, files and input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actors.risk.cli import evaluate_main, holdout_split, train_main, write_holdout
from actors.risk.model import COLUMNS, RiskModel, load_labelled_csv

HEADER = "ACTION," + ",".join(name.upper() for name in COLUMNS)


@pytest.fixture
def labelled_csv(tmp_path) -> Path:
    rng = np.random.default_rng(8)
    n_rows = 600
    table = np.empty((n_rows, 1 + len(COLUMNS)), dtype=np.int64)
    for j in range(len(COLUMNS)):
        table[:, 1 + j] = 100 * (j + 1) + rng.integers(0, 15, n_rows)
    table[:, 0] = (rng.random(n_rows) >= np.where(table[:, 1] % 4 == 0, 0.8, 0.05)).astype(np.int64)
    path = tmp_path / "train.csv"
    path.write_text("\n".join([HEADER, *(",".join(map(str, row)) for row in table.tolist())]) + "\n")
    return path


def test_train_writes_model_and_holdout(labelled_csv, tmp_path, capsys):
    model_path = tmp_path / "out" / "model.npz"
    holdout_path = tmp_path / "out" / "holdout.csv"
    assert train_main(labelled_csv, model_path, 5, holdout_out=holdout_path) == 0
    output = capsys.readouterr().out
    assert "holdout_auc=" in output
    assert "train_rows=480 holdout_rows=120" in output
    assert RiskModel.load(model_path).version in output
    assert len(load_labelled_csv(holdout_path)) == 120


def test_holdout_csv_matches_split(labelled_csv, tmp_path):
    path = tmp_path / "holdout.csv"
    assert write_holdout(path, labelled_csv, seed=5) == 120
    _, test_rows = holdout_split(labelled_csv, seed=5)
    written = load_labelled_csv(path)
    np.testing.assert_array_equal(written.labels, test_rows.labels)
    for name in COLUMNS:
        np.testing.assert_array_equal(written.columns[name], test_rows.columns[name])


def test_evaluate_prints_auc_last(labelled_csv, tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    holdout_path = tmp_path / "holdout.csv"
    train_main(labelled_csv, model_path, 5, holdout_out=holdout_path)
    trained_auc = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("holdout_auc=")
    assert evaluate_main(holdout_path, model_path) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"auc={trained_auc}"


def test_train_missing_data_file(tmp_path, capsys):
    assert train_main(tmp_path / "nope.csv", tmp_path / "model.npz", 1) == 2
    error = capsys.readouterr().err
    assert "jitgate risk train: error:" in error
    assert "nope.csv" in error
    assert "Traceback" not in error
    assert not (tmp_path / "model.npz").exists()


def test_evaluate_missing_model(labelled_csv, tmp_path, capsys):
    assert evaluate_main(labelled_csv, tmp_path / "missing.npz") == 2
    error = capsys.readouterr().err
    assert "missing.npz: model file not found" in error


def test_evaluate_invalid_model_file(labelled_csv, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    assert evaluate_main(labelled_csv, bad) == 2
    assert "bad.npz: not a risk model file" in capsys.readouterr().err


def test_evaluate_missing_action_column(labelled_csv, tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    train_main(labelled_csv, model_path, 5)
    capsys.readouterr()
    requests = tmp_path / "requests.csv"
    requests.write_text("id," + HEADER.removeprefix("ACTION,") + "\n1,1,2,3,4,5,6,7,8,9\n")
    assert evaluate_main(requests, model_path) == 2
    error = capsys.readouterr().err
    assert "requests.csv: line 1: missing column(s) ACTION" in error


def test_evaluate_non_integer_value(labelled_csv, tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    train_main(labelled_csv, model_path, 5)
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\n1,1,2,3,4,5,6,7,8,9\n0,1,2,3,4,5,6,x7,8,9\n")
    assert evaluate_main(bad, model_path) == 2
    error = capsys.readouterr().err
    assert "bad.csv: line 3: column ROLE_FAMILY_DESC: expected an integer, got 'x7'" in error


def test_evaluate_single_class(labelled_csv, tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    train_main(labelled_csv, model_path, 5)
    capsys.readouterr()
    approvals = tmp_path / "approvals.csv"
    approvals.write_text(HEADER + "\n1,1,2,3,4,5,6,7,8,9\n1,1,2,3,4,5,6,7,8,9\n")
    assert evaluate_main(approvals, model_path) == 2
    assert "needs both approvals and denials" in capsys.readouterr().err
