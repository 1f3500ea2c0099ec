"""Functions behind `jitgate risk train` and `jitgate risk evaluate`.

They take parsed arguments, print to stdout, report bad input as one line on
stderr without a traceback and return the process exit code.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from actors.risk.model import (
    COLUMNS,
    HOLDOUT_SEED,
    LABEL_COLUMN,
    LabelledData,
    RiskDataError,
    RiskModel,
    holdout_indices,
    load_labelled_csv,
    roc_auc,
    train,
)
from actors.risk.scoring import DEFAULT_USUAL_DURATION_S, RiskContext, score_batch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_PATH = REPO_ROOT.parent / "shared" / "data" / "amazon-access" / "train.csv"
DEFAULT_MODEL_PATH = REPO_ROOT / "configs" / "risk" / "model.npz"

EXIT_OK = 0
EXIT_INVALID_INPUT = 2


def train_main(data: Path, out: Path, seed: int = HOLDOUT_SEED, *, holdout_out: Path | None = None) -> int:
    """Train on the 80% split of `data`, print the held-out AUC and write the model to `out`.

    With `holdout_out`, also write the held-out 20% as a CSV for `evaluate_main`.
    """
    started = time.perf_counter()
    try:
        result = train(data, seed)
    except RiskDataError as error:
        return _fail("train", str(error))
    elapsed_s = time.perf_counter() - started
    model = result.model
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(out)
        if holdout_out is not None:
            write_holdout(holdout_out, data, seed)
    except (OSError, RiskDataError) as error:
        return _fail("train", f"cannot write output: {error}")
    print(f"data={data}")
    print(f"split: seed={seed} train_rows={result.n_train} holdout_rows={result.n_test}")
    print(f"features={model.n_features} slots={model.n_slots} lbfgs_iterations={result.iterations}")
    print(f"train_time_s={elapsed_s:.1f}")
    print(f"model={out} bytes={out.stat().st_size} version={model.version}")
    if holdout_out is not None:
        print(f"holdout_csv={holdout_out}")
    print(f"holdout_auc={result.holdout_auc:.4f}")
    return EXIT_OK


def evaluate_main(data: Path, model: Path) -> int:
    """Score every row of a labelled CSV in the train.csv format and print `auc=<value>` last."""
    try:
        risk_model = load_model(model)
        rows = load_labelled_csv(data)
    except (RiskDataError, ValueError, OSError) as error:
        return _fail("evaluate", str(error))
    n_approved = int(rows.labels.sum())
    if n_approved in (0, len(rows)):
        return _fail("evaluate", f"{data}: ROC AUC needs both approvals and denials in {LABEL_COLUMN}")
    probability = risk_model.approval_probability(risk_model.encode_columns(rows.columns))
    print(f"model={model} version={risk_model.version}")
    print(f"rows={len(rows)} approved={n_approved} denied={len(rows) - n_approved}")
    print(f"auc={roc_auc(rows.labels, probability):.4f}")
    return EXIT_OK


def load_model(path: Path) -> RiskModel:
    """Load a model file; raises ValueError naming the file when it is missing or invalid."""
    if not path.is_file():
        raise ValueError(f"{path}: model file not found; run `jitgate risk train` to create it")
    return RiskModel.load(path)


def holdout_split(csv_path: Path, seed: int = HOLDOUT_SEED) -> tuple[LabelledData, LabelledData]:
    """Split a labelled CSV into (train_rows, test_rows) exactly as `train` does."""
    data = load_labelled_csv(csv_path)
    train_rows, test_rows = holdout_indices(len(data), seed)
    return data.take(train_rows), data.take(test_rows)


def write_holdout(path: Path, data: Path = DEFAULT_DATA_PATH, seed: int = HOLDOUT_SEED) -> int:
    """Write the held-out 20% of `data` in the train.csv format: returns the number of rows."""
    _, test = holdout_split(data, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([LABEL_COLUMN, *(name.upper() for name in COLUMNS)])
        table = [test.labels.tolist(), *(test.columns[name].tolist() for name in COLUMNS)]
        writer.writerows(zip(*table))
    return len(test)


def _fail(command: str, message: str) -> int:
    print(f"jitgate risk {command}: error: {message}", file=sys.stderr)
    return EXIT_INVALID_INPUT


def benchmark_main(model: Path, data: Path | None = None, batch_sizes: tuple[int, ...] = (1, 512, 4096, 65536)) -> int:
    """Print in-process scoring throughput in rows/s per batch size, on prebuilt index arrays.

    Rows come from `data` (train.csv format) when given, else from random known
    values of each column, which touches fewer pair slots than real rows do.
    """
    try:
        risk_model = load_model(model)
        columns = load_labelled_csv(data).columns if data is not None else None
    except (RiskDataError, ValueError, OSError) as error:
        return _fail("benchmark", str(error))
    rng = np.random.default_rng(0)
    largest = max(batch_sizes)
    if columns is None:
        columns = {name: rng.choice(values, largest) for name, values in zip(COLUMNS, risk_model.column_values)}
    rows = rng.integers(0, len(columns[COLUMNS[0]]), largest)
    index_all = risk_model.encode_columns({name: values[rows] for name, values in columns.items()})
    context_all = RiskContext(
        device_posture=rng.integers(0, 3, largest),
        hour_utc=rng.integers(0, 24, largest),
        duration_s=rng.integers(300, 8 * 3600, largest),
        usual_duration_s=np.full(largest, DEFAULT_USUAL_DURATION_S),
        recent_requests=rng.integers(0, 5, largest),
    )
    print(f"model={model} version={risk_model.version} features={risk_model.n_features}")
    print("batch_rows  probability_rows_s  score_rows_s  score_factors_rows_s  python_loop_rows_s")
    for batch_rows in batch_sizes:
        index = np.ascontiguousarray(index_all[:batch_rows])
        context = RiskContext(**{name: values[:batch_rows] for name, values in context_all.__dict__.items()})
        index_rows = index.tolist()
        rates = [
            _rows_per_second(lambda: risk_model.approval_probability(index), batch_rows),
            _rows_per_second(lambda: score_batch(risk_model, index, context, with_factors=False), batch_rows),
            _rows_per_second(lambda: score_batch(risk_model, index, context), batch_rows),
            _rows_per_second(lambda: risk_model.approval_probability_python(index_rows), batch_rows),
        ]
        print(f"{batch_rows:>10}  " + "  ".join(f"{rate:>18,.0f}" for rate in rates))
    return EXIT_OK


def _rows_per_second(run, batch_rows: int, min_time_s: float = 0.2, rounds: int = 3) -> float:
    run()
    best_s = math.inf
    for _ in range(rounds):
        calls = 0
        started = time.perf_counter()
        while True:
            run()
            calls += 1
            elapsed_s = time.perf_counter() - started
            if elapsed_s >= min_time_s:
                break
        best_s = min(best_s, elapsed_s / calls)
    return batch_rows / best_s
