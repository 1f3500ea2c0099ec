"""Approval model learned from historical access decisions.

Logistic regression on one-hot categorical features and on one-hot combinations
of them (pairs, triples and the job profile). Each feature of a row maps to one global slot id, so
the approval logit of a row is `bias + sum(weights[index[row, :]])` where `index`
is an (n, k) intp array. Category values seen fewer than `min_count` times in
training share the feature's unknown slot, which then also scores values never
seen at all. Pure numpy: no Ray, no Redis.
"""

from __future__ import annotations

import csv
import hashlib
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Attribute names as the API sends them; the CSV header uses the upper-case form.
COLUMNS: tuple[str, ...] = (
    "resource",
    "mgr_id",
    "role_rollup_1",
    "role_rollup_2",
    "role_deptname",
    "role_title",
    "role_family_desc",
    "role_family",
    "role_code",
)
LABEL_COLUMN = "ACTION"

# Split of train.csv: a numpy Generator permutation with this seed, the first 20%
# of the permuted rows are held out for evaluation, the other 80% train the model.
HOLDOUT_SEED = 20261204
HOLDOUT_FRACTION = 0.2

# Raw id that no vocabulary contains: missing attributes and non-numeric values.
MISSING_ID = np.iinfo(np.int64).min
# Raw ids at or above this parse as MISSING_ID.
MAX_RAW_ID = 2**62

# Features as tuples of column positions in COLUMNS. ROLE_CODE is left out because
# it is a one-to-one relabelling of ROLE_TITLE in the data.
SINGLE_FEATURES: tuple[tuple[int, ...], ...] = tuple((i,) for i in range(8))
# The role columns 2..7 together: the job profile of the principal.
JOB_PROFILE = (2, 3, 4, 5, 6, 7)
# Chosen by `select_features` on the 80% training rows only (3 folds, seed 7, l2 1e-4,
# min_gain 1e-4, at most 30 features) from all pairs and triples of the eight
# columns plus JOB_PROFILE alone, with resource and with mgr_id. The README next
# to the trained model gives the command.
DEFAULT_FEATURES: tuple[tuple[int, ...], ...] = (
    *SINGLE_FEATURES,
    JOB_PROFILE,
    (1, *JOB_PROFILE),
    (3, 4, 6),
    (1, 3, 6),
    (2, 4, 6),
    (1, 4, 6),
    (1, 5),
    (4, 5, 6),
    (3, 5, 6),
    (2, 5, 6),
    (3, 7),
    (1, 2),
    (2, 6),
    (0, 3, 5),
    (0, 3),
    (0, 5, 6),
    (0, 2, 4),
    (0, 2, 5),
    (0, 7),
    (0, 2),
)

DEFAULT_MIN_COUNT = 2
# Chosen by mean validation AUC over the same 3 folds among 5e-5, 1e-4 and 2e-4.
DEFAULT_L2 = 2e-4
DEFAULT_MAX_ITER = 300
MODEL_FORMAT = 1


class RiskDataError(ValueError):
    """Invalid training or evaluation data; the message names the file, row and column."""


# ---------------------------------------------------------------------------
# Data loading


@dataclass(frozen=True)
class LabelledData:
    """Rows of a CSV in the train.csv format, column-wise."""

    labels: np.ndarray  # int8 (n,), 1 approve, 0 deny
    columns: dict[str, np.ndarray]  # lower-case column name -> int64 (n,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: np.ndarray) -> LabelledData:
        return LabelledData(self.labels[rows], {name: values[rows] for name, values in self.columns.items()})


def load_labelled_csv(path: Path | str) -> LabelledData:
    """Read a CSV with an ACTION column and the nine category columns of train.csv.

    Raises RiskDataError naming the file, the 1-based line and the column for a
    missing file, a missing column or a value that is not an integer.
    """
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as error:
        raise RiskDataError(f"{path}: cannot open the data file: {error.strerror or error}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise RiskDataError(f"{path}: the file is empty, expected a header with {LABEL_COLUMN} and {_csv_names()}")
        header = [name.strip() for name in header]
        expected_columns = (LABEL_COLUMN, *(name.upper() for name in COLUMNS))
        missing = [name for name in expected_columns if name not in header]
        if missing:
            raise RiskDataError(f"{path}: line 1: missing column(s) {', '.join(missing)} in the header")
        positions = [header.index(name) for name in expected_columns]
        rows: list[list[int]] = []
        for line_number, record in enumerate(reader, start=2):
            if not record:
                continue
            rows.append(_parse_record(path, line_number, record, positions, expected_columns))
    if not rows:
        raise RiskDataError(f"{path}: no data rows after the header")
    table = np.asarray(rows, dtype=np.int64)
    labels = table[:, 0]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise RiskDataError(
            f"{path}: line {int(bad[0]) + 2}: column {LABEL_COLUMN}: expected 0 or 1, got {int(labels[bad[0]])}"
        )
    columns = {name: np.ascontiguousarray(table[:, i + 1]) for i, name in enumerate(COLUMNS)}
    return LabelledData(labels.astype(np.int8), columns)


def _parse_record(
    path: Path, line_number: int, record: list[str], positions: list[int], names: tuple[str, ...]
) -> list[int]:
    values = []
    for position, name in zip(positions, names):
        if position >= len(record):
            raise RiskDataError(f"{path}: line {line_number}: column {name}: missing value")
        text = record[position].strip()
        try:
            values.append(int(text))
        except ValueError:
            raise RiskDataError(
                f"{path}: line {line_number}: column {name}: expected an integer, got {text[:40]!r}"
            ) from None
    return values


def _csv_names() -> str:
    return ",".join(name.upper() for name in COLUMNS)


def holdout_indices(n_rows: int, seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions 80/20: returns sorted (train_rows, test_rows).

    The test rows are the first 20% (rounded) of `np.random.default_rng(seed).permutation(n_rows)`.
    """
    permutation = np.random.default_rng(seed).permutation(n_rows)
    n_test = int(round(n_rows * HOLDOUT_FRACTION))
    return np.sort(permutation[n_test:]), np.sort(permutation[:n_test])


# ---------------------------------------------------------------------------
# Metrics


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Compute ROC AUC by the Mann-Whitney U statistic, with average ranks for tied scores."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs both classes, got {n_pos} positive and {n_neg} negative labels")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Tied scores share the mean of the 1-based ranks they span.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], sorted_scores.size]
    average_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.repeat(average_rank, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ---------------------------------------------------------------------------
# The model


def feature_name(feature: Sequence[int]) -> str:
    """Name a feature by its columns, joined with ':' as interaction terms are in R formulas.

    The six JOB_PROFILE columns together are named `job_profile`, to keep factor names short.
    """
    if set(JOB_PROFILE) <= set(feature):
        rest = [COLUMNS[i] for i in feature if i not in JOB_PROFILE]
        return ":".join([*rest, "job_profile"])
    return ":".join(COLUMNS[i] for i in feature)


class RiskModel:
    """A trained approval model: vocabularies, slot layout and float32 weights."""

    def __init__(
        self,
        *,
        column_values: Sequence[np.ndarray],
        features: Sequence[Sequence[int]],
        feature_keys: Sequence[np.ndarray],
        weights: np.ndarray,
        bias: float,
        mean_weights: np.ndarray,
    ) -> None:
        if len(column_values) != len(COLUMNS):
            raise ValueError(f"expected {len(COLUMNS)} column vocabularies, got {len(column_values)}")
        if len(feature_keys) != len(features):
            raise ValueError(f"expected {len(features)} feature vocabularies, got {len(feature_keys)}")
        self.column_values = [np.ascontiguousarray(v, dtype=np.int64) for v in column_values]
        self.features = tuple(tuple(int(c) for c in f) for f in features)
        self.feature_keys = [np.ascontiguousarray(k, dtype=np.int64) for k in feature_keys]
        # Code 0 is the unknown code of a column, known values get 1..len.
        self.column_cardinality = np.array([v.size + 1 for v in self.column_values], dtype=np.int64)
        for feature in self.features:
            # Combination keys are mixed-radix int64 numbers of the column codes.
            if math.prod(int(self.column_cardinality[c]) for c in feature) >= 2**62:
                raise ValueError(f"feature {feature_name(feature)} has too many combinations for an int64 key")
        sizes = np.array([k.size + 1 for k in self.feature_keys], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.n_slots = int(sizes.sum())
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        if self.weights.shape != (self.n_slots,):
            raise ValueError(f"expected {self.n_slots} weights, got shape {self.weights.shape}")
        self.bias = np.float32(bias)
        self.mean_weights = np.ascontiguousarray(mean_weights, dtype=np.float32)
        if self.mean_weights.shape != (len(self.features),):
            raise ValueError(f"expected {len(self.features)} mean weights, got shape {self.mean_weights.shape}")
        self.feature_names: tuple[str, ...] = tuple(feature_name(f) for f in self.features)
        self._weights_list: list[float] | None = None
        self._lookups: tuple[list[dict[int, int]], list[tuple]] | None = None
        self.version = "amazon-lr-" + self._digest()[:12]

    @property
    def n_features(self) -> int:
        return len(self.features)

    def _digest(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.asarray(self.features_matrix()).tobytes())
        for keys in self.feature_keys:
            digest.update(keys.tobytes())
        for values in self.column_values:
            digest.update(values.tobytes())
        digest.update(self.weights.tobytes())
        digest.update(np.float32(self.bias).tobytes())
        return digest.hexdigest()

    def features_matrix(self) -> np.ndarray:
        matrix = np.full((len(self.features), len(COLUMNS)), -1, dtype=np.int64)
        for j, feature in enumerate(self.features):
            matrix[j, : len(feature)] = feature
        return matrix

    # -- encoding ----------------------------------------------------------

    def encode_columns(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Map raw category ids to global slot ids, column-wise: returns intp (n, k).

        `columns` maps lower-case column names to int64 arrays of equal length. A
        missing column, an id not in the vocabulary and MISSING_ID all map to the
        feature's unknown slot.
        """
        n_rows = _common_length(columns)
        if n_rows <= FEW_ROWS:
            return self._encode_few(columns, n_rows)
        codes = [self._column_codes(name, values, columns.get(name), n_rows) for name, values in zip(COLUMNS, self.column_values)]
        # intp, the index type of np.take: an int32 index would be converted on every scoring call.
        index = np.empty((n_rows, len(self.features)), dtype=np.intp)
        for j, feature in enumerate(self.features):
            offset = self.offsets[j]
            if len(feature) == 1:
                # Every known value of a column is in a single feature's vocabulary.
                index[:, j] = codes[feature[0]] + offset
                continue
            key = self._combine(feature, codes)
            keys = self.feature_keys[j]
            position = np.searchsorted(keys, key)
            found = keys[np.minimum(position, keys.size - 1)] == key if keys.size else np.zeros(n_rows, bool)
            index[:, j] = np.where(found, position + 1, 0) + offset
        return index

    def _encode_few(self, columns: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        """`encode_columns` with dict lookups, for batches of at most FEW_ROWS rows.

        Below that size the numpy calls' fixed cost dominates: one row took about 230 us
        through `searchsorted` and about 16 us here (CPython 3.11, 2-core AMD EPYC VM).
        """
        if self._lookups is None:
            self._lookups = self._build_lookups()
        column_codes, feature_slots = self._lookups
        codes_by_column = []
        for name, codes_of in zip(COLUMNS, column_codes):
            values = columns.get(name)
            if values is None:
                codes_by_column.append([0] * n_rows)
                continue
            codes_by_column.append([codes_of.get(value, 0) for value in _integer_column(name, values).tolist()])
        rows = []
        for row_codes in zip(*codes_by_column):
            row = []
            for feature, offset, cardinalities, slots in feature_slots:
                if slots is None:
                    row.append(row_codes[feature[0]] + offset)
                    continue
                key = row_codes[feature[0]]
                for column, cardinality in zip(feature[1:], cardinalities):
                    key = key * cardinality + row_codes[column]
                row.append(slots.get(key, 0) + offset)
            rows.append(row)
        return np.array(rows, dtype=np.intp).reshape(n_rows, len(self.features))

    def _build_lookups(self) -> tuple[list[dict[int, int]], list[tuple]]:
        """Return the dicts of `_encode_few`: raw id -> column code, and per feature combined key -> code."""
        column_codes = [{value: code for code, value in enumerate(values.tolist(), 1)} for values in self.column_values]
        feature_slots = []
        for feature, offset, keys in zip(self.features, self.offsets.tolist(), self.feature_keys):
            cardinalities = tuple(int(self.column_cardinality[column]) for column in feature[1:])
            slots = None if len(feature) == 1 else {key: code for code, key in enumerate(keys.tolist(), 1)}
            feature_slots.append((feature, offset, cardinalities, slots))
        return column_codes, feature_slots

    def encode_rows(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """Encode attribute dicts from the API (values str or int): returns int32 (n, k).

        A value that is not a plain decimal integer, such as "postgres://prod/orders",
        and a missing attribute map to the feature's unknown slot.
        """
        columns = {name: parse_ids([row.get(name) for row in rows]) for name in COLUMNS}
        return self.encode_columns(columns)

    def _column_codes(self, name: str, vocabulary: np.ndarray, values: np.ndarray | None, n_rows: int) -> np.ndarray:
        if values is None:
            return np.zeros(n_rows, dtype=np.int64)
        values = _integer_column(name, values)
        if vocabulary.size == 0:
            return np.zeros(n_rows, dtype=np.int64)
        position = np.searchsorted(vocabulary, values)
        found = vocabulary[np.minimum(position, vocabulary.size - 1)] == values
        return np.where(found, position + 1, 0)

    def _combine(self, feature: Sequence[int], codes: Sequence[np.ndarray]) -> np.ndarray:
        # Mixed-radix key of the column codes. __init__ checks that it fits in int64.
        key = codes[feature[0]].copy()
        for column in feature[1:]:
            key *= self.column_cardinality[column]
            key += codes[column]
        return key

    # -- scoring -----------------------------------------------------------

    def approval_logit(self, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Compute `bias + sum(weights[index], axis=1)` as float32 (n,), blockwise to stay in cache."""
        n_rows = index.shape[0]
        if out is None:
            out = np.empty(n_rows, dtype=np.float32)
        buffer = np.empty((min(n_rows, _BLOCK_ROWS), index.shape[1]), dtype=np.float32)
        ones = np.ones(index.shape[1], dtype=np.float32)
        for start in range(0, n_rows, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, n_rows)
            block = buffer[: stop - start]
            # mode="clip" skips the bounds check, which costs about a third of the
            # time. Ids from encode_columns are always below n_slots.
            np.take(self.weights, index[start:stop], out=block, mode="clip")
            np.matmul(block, ones, out=out[start:stop])
        out += self.bias
        return out

    def approval_probability(self, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Compute the approval probability as float32 (n,)."""
        out = self.approval_logit(index, out)
        return _sigmoid_inplace(out)

    def approval_probability_python(self, index_rows: Iterable[Sequence[int]]) -> list[float]:
        """Score row by row in plain Python: the reference for tests and benchmarks."""
        if self._weights_list is None:
            self._weights_list = self.weights.tolist()
        weights = self._weights_list
        bias = float(self.bias)
        probabilities = []
        for row in index_rows:
            logit = bias
            for slot in row:
                logit += weights[slot]
            probabilities.append(1.0 / (1.0 + math.exp(-logit)))
        return probabilities

    # -- persistence -------------------------------------------------------

    def save(self, path: Path | str) -> None:
        """Write the model as a compressed .npz file."""
        np.savez_compressed(
            Path(path),
            format=np.int64(MODEL_FORMAT),
            column_values=np.concatenate(self.column_values),
            column_sizes=np.array([v.size for v in self.column_values], dtype=np.int64),
            features=self.features_matrix(),
            feature_keys=np.concatenate(self.feature_keys) if self.feature_keys else np.zeros(0, np.int64),
            feature_sizes=np.array([k.size for k in self.feature_keys], dtype=np.int64),
            weights=self.weights,
            bias=np.float32(self.bias),
            mean_weights=self.mean_weights,
        )

    @classmethod
    def load(cls, path: Path | str) -> RiskModel:
        """Read a model written by `save`.

        Raises OSError when the file cannot be read and ValueError naming the file
        when it is not a model file of this format.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a risk model file: {error}") from None
        missing = sorted(set(_MODEL_ARRAYS) - set(arrays))
        if missing:
            raise ValueError(f"{path}: not a risk model file: missing arrays {missing}")
        model_format = int(arrays["format"])
        if model_format != MODEL_FORMAT:
            raise ValueError(f"{path}: model format {model_format} is not supported, expected {MODEL_FORMAT}")
        column_values = np.split(arrays["column_values"], np.cumsum(arrays["column_sizes"])[:-1])
        feature_keys = np.split(arrays["feature_keys"], np.cumsum(arrays["feature_sizes"])[:-1])
        features = [tuple(int(c) for c in row if c >= 0) for row in arrays["features"]]
        return cls(
            column_values=column_values,
            features=features,
            feature_keys=feature_keys,
            weights=arrays["weights"],
            bias=float(arrays["bias"]),
            mean_weights=arrays["mean_weights"],
        )


_BLOCK_ROWS = 4096
# Batches up to this size are encoded with dict lookups instead of numpy searches.
FEW_ROWS = 16
_MODEL_ARRAYS = (
    "format",
    "column_values",
    "column_sizes",
    "features",
    "feature_keys",
    "feature_sizes",
    "weights",
    "bias",
    "mean_weights",
)


def _sigmoid_inplace(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-x)) without temporaries. In float32, exp overflows to inf for
    # x < -88, which still gives the correct limit 0.
    with np.errstate(over="ignore"):
        np.negative(x, out=x)
        np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    return x


def _common_length(columns: Mapping[str, np.ndarray]) -> int:
    lengths = {name: len(values) for name, values in columns.items()}
    unknown = sorted(set(lengths) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}, expected names from {list(COLUMNS)}")
    if not lengths:
        raise ValueError(f"no columns given, expected some of {list(COLUMNS)}")
    distinct = set(lengths.values())
    if len(distinct) != 1:
        raise ValueError(f"columns differ in length: {lengths}")
    return distinct.pop()


def _integer_column(name: str, values: np.ndarray) -> np.ndarray:
    """Return the raw ids of column `name` as int64, or raise TypeError when they are not integers."""
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise TypeError(f"column {name!r}: expected an integer array, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)


def parse_ids(values: Sequence[object]) -> np.ndarray:
    """Return `parse_id` of every value as an int64 array.

    When every value is a string of ASCII digits, one `int()` pass replaces the per-value
    checks, which matters for the API's bulk calls.
    """
    try:
        joined = "".join(values)  # type: ignore[arg-type]
    except TypeError:  # a value that is not a string
        joined = ""
    if joined.isascii() and joined.encode().isdigit():
        try:
            # int("") raises ValueError, and a value past the int64 range OverflowError.
            ids = np.fromiter(map(int, values), np.int64, len(values))  # type: ignore[arg-type]
        except (ValueError, OverflowError):
            pass
        else:
            ids[ids >= MAX_RAW_ID] = MISSING_ID
            return ids
    return np.fromiter(map(parse_id, values), np.int64, len(values))


def parse_id(value: object) -> int:
    """Parse a raw category id from an API attribute, or return MISSING_ID."""
    if isinstance(value, bool):
        return MISSING_ID
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit():
            return MISSING_ID
        number = int(text)
    else:
        return MISSING_ID
    if not 0 <= number < MAX_RAW_ID:
        return MISSING_ID
    return number


# ---------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainResult:
    """A trained model with its held-out evaluation."""

    model: RiskModel
    holdout_auc: float
    n_train: int
    n_test: int
    iterations: int


def train(
    csv_path: Path | str,
    seed: int = HOLDOUT_SEED,
    *,
    features: Sequence[Sequence[int]] = DEFAULT_FEATURES,
    min_count: int = DEFAULT_MIN_COUNT,
    l2: float | Sequence[float] = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
) -> TrainResult:
    """Train on the 80% split of `csv_path` given by `holdout_indices(n, seed)` and score the other 20%."""
    data = load_labelled_csv(csv_path)
    train_rows, test_rows = holdout_indices(len(data), seed)
    train_data = data.take(train_rows)
    test_data = data.take(test_rows)
    model, iterations = fit(train_data, features=features, min_count=min_count, l2=l2, max_iter=max_iter)
    probability = model.approval_probability(model.encode_columns(test_data.columns))
    return TrainResult(
        model=model,
        holdout_auc=roc_auc(test_data.labels, probability),
        n_train=len(train_data),
        n_test=len(test_data),
        iterations=iterations,
    )


def fit(
    data: LabelledData,
    *,
    features: Sequence[Sequence[int]] = DEFAULT_FEATURES,
    min_count: int = DEFAULT_MIN_COUNT,
    l2: float | Sequence[float] = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
) -> tuple[RiskModel, int]:
    """Build the vocabularies from `data` and fit the weights: returns (model, L-BFGS iterations).

    Deterministic: the same data and arguments give bit-identical weights.
    """
    layout = build_layout(data, features, min_count)
    index = layout.encode_columns(data.columns)
    bias, weights, iterations = _fit_logistic(
        index, data.labels, layout.n_slots, l2=_l2_by_slot(layout, l2), max_iter=max_iter
    )
    # Mean weight of each feature over the training rows: the baseline that the
    # per-feature risk factors are measured against.
    mean_weights = weights.astype(np.float32)[index].mean(axis=0, dtype=np.float64)
    model = RiskModel(
        column_values=layout.column_values,
        features=layout.features,
        feature_keys=layout.feature_keys,
        weights=weights,
        bias=bias,
        mean_weights=mean_weights,
    )
    return model, iterations


def build_layout(data: LabelledData, features: Sequence[Sequence[int]], min_count: int) -> RiskModel:
    """Build vocabularies and slot layout from `data`: returns a model with zero weights.

    A column value or a combination seen fewer than `min_count` times gets no slot
    of its own and falls into the feature's unknown slot.
    """
    column_values = []
    for name in COLUMNS:
        values, counts = np.unique(data.columns[name], return_counts=True)
        column_values.append(values[counts >= min_count])
    cardinality = [v.size + 1 for v in column_values]
    for feature in features:
        if math.prod(cardinality[c] for c in feature) >= 2**62:
            raise ValueError(f"feature {feature_name(feature)} has too many combinations for an int64 key")
    codes = [_codes(vocabulary, data.columns[name]) for name, vocabulary in zip(COLUMNS, column_values)]
    feature_keys = []
    for feature in features:
        if len(feature) == 1:
            feature_keys.append(np.arange(1, cardinality[feature[0]], dtype=np.int64))
            continue
        key = codes[feature[0]].copy()
        for column in feature[1:]:
            key *= cardinality[column]
            key += codes[column]
        keys, counts = np.unique(key, return_counts=True)
        feature_keys.append(keys[counts >= min_count])
    return RiskModel(
        column_values=column_values,
        features=features,
        feature_keys=feature_keys,
        weights=np.zeros(sum(k.size + 1 for k in feature_keys), dtype=np.float32),
        bias=0.0,
        mean_weights=np.zeros(len(features), dtype=np.float32),
    )


def select_features(
    data: LabelledData,
    candidates: Sequence[Sequence[int]],
    *,
    start: Sequence[Sequence[int]] = SINGLE_FEATURES,
    n_folds: int = 3,
    seed: int = 7,
    min_gain: float = 1e-4,
    max_features: int = 30,
    min_count: int = DEFAULT_MIN_COUNT,
    l2: float = DEFAULT_L2,
    max_iter: int = 80,
    log=print,
) -> list[tuple[int, ...]]:
    """Choose combination features by mean validation AUC over `n_folds` folds of `data`.

    First ranks the candidates by the AUC each reaches when added alone to `start`,
    then walks that ranking and keeps a candidate when it raises the AUC of the
    features kept so far by at least `min_gain`, up to `max_features`. Pass only
    training rows, because the held-out split must not influence the choice.
    """
    start = [tuple(f) for f in start]
    everything = start + [tuple(f) for f in candidates if tuple(f) not in start]
    folds = np.array_split(np.random.default_rng(seed).permutation(len(data)), n_folds)
    prepared = []
    for fold in range(n_folds):
        validation_rows = np.sort(folds[fold])
        train_rows = np.sort(np.concatenate([folds[j] for j in range(n_folds) if j != fold]))
        train_data, validation_data = data.take(train_rows), data.take(validation_rows)
        layout = build_layout(train_data, everything, min_count)
        train_index = layout.encode_columns(train_data.columns)
        validation_index = layout.encode_columns(validation_data.columns)
        prepared.append((train_index, train_data.labels, validation_index, validation_data.labels, layout.n_slots))

    def evaluate(chosen: list[int]) -> float:
        aucs = []
        for train_index, train_labels, validation_index, validation_labels, n_slots in prepared:
            bias, weights, _ = _fit_logistic(
                np.ascontiguousarray(train_index[:, chosen]),
                train_labels,
                n_slots,
                l2=np.full(n_slots, l2),
                max_iter=max_iter,
            )
            logit = bias + weights[validation_index[:, chosen]].sum(axis=1)
            aucs.append(roc_auc(validation_labels, logit))
        return float(np.mean(aucs))

    chosen = list(range(len(start)))
    best_auc = evaluate(chosen)
    log(f"start: {len(chosen)} features, validation AUC {best_auc:.5f}")
    alone = {j: evaluate(chosen + [j]) for j in range(len(start), len(everything))}
    ranking = sorted(alone, key=lambda j: -alone[j])
    log("ranking: " + ", ".join(f"{feature_name(everything[j])} {alone[j]:.5f}" for j in ranking[:10]) + ", ...")
    for j in ranking:
        if len(chosen) >= max_features:
            break
        auc = evaluate(chosen + [j])
        if auc >= best_auc + min_gain:
            chosen.append(j)
            best_auc = auc
            log(f"add {feature_name(everything[j])}: validation AUC {auc:.5f}")
    return [everything[j] for j in chosen]


def _l2_by_slot(layout: RiskModel, l2: float | Sequence[float]) -> np.ndarray:
    # A sequence gives the penalty per feature order: singles, pairs, triples and so on.
    if isinstance(l2, (int, float)):
        by_feature = np.full(layout.n_features, float(l2))
    else:
        by_feature = np.array([l2[len(feature) - 1] for feature in layout.features], dtype=np.float64)
    return np.repeat(by_feature, [keys.size + 1 for keys in layout.feature_keys])


def _codes(vocabulary: np.ndarray, values: np.ndarray) -> np.ndarray:
    if vocabulary.size == 0:
        return np.zeros(values.shape[0], dtype=np.int64)
    position = np.searchsorted(vocabulary, values)
    found = vocabulary[np.minimum(position, vocabulary.size - 1)] == values
    return np.where(found, position + 1, 0)


def _fit_logistic(
    index: np.ndarray,
    labels: np.ndarray,
    n_slots: int,
    *,
    l2: np.ndarray,
    max_iter: int,
    x0: np.ndarray | None = None,
) -> tuple[float, np.ndarray, int]:
    """Minimise mean log loss + sum(l2 * weights^2) / 2 (bias not penalised) with L-BFGS."""
    n_rows, k = index.shape
    flat_index = index.ravel()
    signs = np.where(labels == 1, 1.0, -1.0)

    def loss_and_gradient(x: np.ndarray) -> tuple[float, np.ndarray]:
        bias, weights = x[0], x[1:]
        logit = bias + weights[index].sum(axis=1)
        margin = signs * logit
        loss = np.logaddexp(0.0, -margin).mean() + 0.5 * (l2 * weights) @ weights
        # d loss / d logit = -sign * sigmoid(-margin) / n
        dlogit = -signs * _stable_sigmoid(-margin) / n_rows
        gradient = np.empty_like(x)
        gradient[0] = dlogit.sum()
        gradient[1:] = np.bincount(flat_index, weights=np.repeat(dlogit, k), minlength=n_slots)
        gradient[1:] += l2 * weights
        return float(loss), gradient

    x0 = np.zeros(n_slots + 1) if x0 is None else x0
    x, iterations = _minimize_lbfgs(loss_and_gradient, x0, max_iter=max_iter)
    return float(x[0]), x[1:], iterations


def _stable_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _minimize_lbfgs(fun, x0: np.ndarray, *, max_iter: int, history: int = 10, gtol: float = 1e-7):
    """Minimise a smooth convex function with L-BFGS and an Armijo backtracking line search."""
    x = x0.copy()
    f, g = fun(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    iteration = 0
    for iteration in range(1, max_iter + 1):
        direction = -_lbfgs_two_loop(g, pairs)
        slope = float(g @ direction)
        if slope >= 0.0:
            # The curvature pairs gave no descent direction: restart from the gradient.
            pairs.clear()
            direction = -g / max(1.0, float(np.linalg.norm(g)))
            slope = float(g @ direction)
        step = 1.0
        while True:
            x_new = x + step * direction
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                return x, iteration
        s = x_new - x
        y = g_new - g
        sy = float(s @ y)
        if sy > 1e-12:
            pairs.append((s, y, 1.0 / sy))
            if len(pairs) > history:
                pairs.pop(0)
        x, f, g = x_new, f_new, g_new
        if float(np.abs(g).max()) < gtol:
            break
    return x, iteration


def _lbfgs_two_loop(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    if not pairs:
        return g / max(1.0, float(np.linalg.norm(g)))
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    s, y, _ = pairs[-1]
    q *= float(s @ y) / float(y @ y)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        beta = rho * float(y @ q)
        q += (alpha - beta) * s
    return q
