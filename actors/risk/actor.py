"""RiskScorer: scores access requests in batches gathered from concurrent calls.

A plain class; the caller makes it an actor with
`ray.remote(RiskScorer).options(max_restarts=-1, max_task_retries=-1, num_cpus=0)`.
Its methods are async, so Ray runs it as an async actor: concurrent `score`
calls put their items on one queue, and a single batching task scores whatever
is waiting in one vectorized call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np

from actors.risk.model import COLUMNS, RiskModel
from actors.risk.scoring import (
    DEFAULT_USUAL_DURATION_S,
    DEVICE_POSTURES,
    RecentRequestCounter,
    RiskContext,
    score_batch,
)

logger = logging.getLogger("jitgate.risk")

DEFAULT_MAX_BATCH_ROWS = 4096
DEFAULT_RATE_WINDOW_MS = 10 * 60 * 1000
DEFAULT_MAX_PRINCIPALS = 100_000
MAX_ATTRIBUTE_CHARS = 256

_POSTURE_CODES = {name: code for code, name in enumerate(DEVICE_POSTURES)}


class RiskScorer:
    """Risk scores for access requests, with per-principal request rates kept in memory.

    Each item of `score` is a dict with `principal` (str), `principal_attributes`
    (dict of the lower-case model attributes, str or int values), `resource` (str),
    `role` (str), `duration_s` (int > 0), `device_posture` ("managed", "unmanaged"
    or "unknown"), `hour_utc` (0..23) and `now_ms` (epoch ms). An optional
    `usual_duration_s` (int > 0) overrides DEFAULT_USUAL_DURATION_S. Other keys are ignored.
    """

    def __init__(
        self,
        model_path: str,
        *,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        rate_window_ms: int = DEFAULT_RATE_WINDOW_MS,
        max_principals: int = DEFAULT_MAX_PRINCIPALS,
    ) -> None:
        if max_batch_rows <= 0:
            raise ValueError(f"max_batch_rows must be positive, got {max_batch_rows}")
        self._model = RiskModel.load(model_path)
        self._max_batch_rows = max_batch_rows
        # NOTE: the rates live in memory only, so a restarted actor counts from zero.
        self._rates = RecentRequestCounter(window_ms=rate_window_ms, max_principals=max_principals)
        # Created on first use, inside the event loop of the actor.
        self._queue: asyncio.Queue[tuple[list[dict], asyncio.Future]] | None = None
        self._batcher: asyncio.Task | None = None
        self.batches_scored = 0
        self.rows_scored = 0
        logger.info(
            "risk model %s loaded from %s: %d features, %d slots",
            self._model.version,
            model_path,
            self._model.n_features,
            self._model.n_slots,
        )

    def version(self) -> str:
        return self._model.version

    def stats(self) -> dict[str, int]:
        """Return counters of the batching loop: batches, rows and principals tracked."""
        return {
            "batches_scored": self.batches_scored,
            "rows_scored": self.rows_scored,
            "principals_tracked": len(self._rates),
        }

    async def score(self, items: list[dict]) -> list[dict]:
        """Score access requests: returns per item risk_score (0..100), factors and model_version.

        Raises ValueError naming the item and field when an item is invalid; then
        nothing of the call is scored or counted.
        """
        checked = [_check_item(position, item) for position, item in enumerate(items)]
        if not checked:
            return []
        self._ensure_batcher()
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((checked, future))
        return await future

    async def score_columns(
        self,
        columns: Mapping[str, np.ndarray],
        context: Mapping[str, np.ndarray],
        with_factors: bool = False,
    ) -> dict:
        """Score a column batch directly, for bulk callers that bring their own request counts.

        `columns` maps lower-case attribute names to int64 arrays of raw ids, and
        `context` contains the RiskContext arrays. Returns `risk_score` (float32 array) and
        `model_version`, plus `factor_names`, `factor_index` and `factor_weight` with factors.
        """
        index = self._model.encode_columns(columns)
        scores = score_batch(self._model, index, context, with_factors=with_factors)
        self.batches_scored += 1
        self.rows_scored += index.shape[0]
        result = {"risk_score": scores.risk_score, "model_version": self._model.version}
        if with_factors:
            result["factor_names"] = list(scores.factor_names)
            result["factor_index"] = scores.factor_index
            result["factor_weight"] = scores.factor_weight
        return result

    def _ensure_batcher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._batcher is not None and not self._batcher.done() and self._batcher.get_loop() is loop:
            return
        # Ray keeps one event loop per actor. A new loop only appears when tests drive
        # the class with asyncio.run, and an asyncio.Queue cannot move between loops.
        self._queue = asyncio.Queue()
        self._batcher = loop.create_task(self._run_batches())

    async def _run_batches(self) -> None:
        queue = self._queue
        while True:
            calls = [await queue.get()]
            # Let calls that arrived together reach the queue before the batch closes.
            await asyncio.sleep(0)
            rows = len(calls[0][0])
            while rows < self._max_batch_rows and not queue.empty():
                call = queue.get_nowait()
                calls.append(call)
                rows += len(call[0])
            self._score_calls(calls)

    def _score_calls(self, calls: list[tuple[list[dict], asyncio.Future]]) -> None:
        items = [item for call_items, _ in calls for item in call_items]
        try:
            results = self._score_items(items)
        except Exception as error:  # noqa: BLE001 - each caller gets the error of its batch
            logger.exception("scoring a batch of %d items from %d calls failed", len(items), len(calls))
            for _, future in calls:
                if not future.done():
                    future.set_exception(error)
            return
        start = 0
        for call_items, future in calls:
            stop = start + len(call_items)
            if not future.done():  # the caller may have been cancelled
                future.set_result(results[start:stop])
            start = stop

    def _score_items(self, items: list[dict]) -> list[dict]:
        n_rows = len(items)
        recent = np.fromiter(
            (self._rates.record(item["principal"], item["now_ms"]) for item in items), dtype=np.int64, count=n_rows
        )

        attribute_rows = []
        for item in items:
            attributes = dict(item["principal_attributes"])
            # The model's resource column is the request's resource, not a principal attribute.
            attributes["resource"] = item["resource"]
            attribute_rows.append(attributes)
        index = self._model.encode_rows(attribute_rows)

        context = RiskContext(
            device_posture=np.fromiter((_POSTURE_CODES[i["device_posture"]] for i in items), np.int8, n_rows),
            hour_utc=np.fromiter((i["hour_utc"] for i in items), np.int16, n_rows),
            duration_s=np.fromiter((i["duration_s"] for i in items), np.float64, n_rows),
            usual_duration_s=np.fromiter(
                (i.get("usual_duration_s", DEFAULT_USUAL_DURATION_S) for i in items), np.float64, n_rows
            ),
            recent_requests=recent,
        )
        scores = score_batch(self._model, index, context, with_factors=True)
        self.batches_scored += 1
        self.rows_scored += n_rows

        version = self._model.version
        risk_scores = np.round(scores.risk_score.astype(np.float64), 1).tolist()
        return [
            {
                "risk_score": risk_scores[row],
                "factors": [{"name": name, "weight": round(weight, 3)} for name, weight in scores.factors(row)],
                "model_version": version,
            }
            for row in range(n_rows)
        ]


def _check_item(position: int, item: object) -> dict:
    if not isinstance(item, Mapping):
        raise ValueError(f"item {position}: expected a dict, got {type(item).__name__}")
    for name in ("principal", "resource", "role"):
        value = item.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"item {position}: field {name!r}: expected a non-empty string, got {value!r}")
    attributes = item.get("principal_attributes")
    if not isinstance(attributes, Mapping):
        raise ValueError(
            f"item {position}: field 'principal_attributes': expected a dict, got {type(attributes).__name__}"
        )
    for key in COLUMNS:
        value = attributes.get(key)
        if value is not None and not _is_attribute_value(value):
            raise ValueError(
                f"item {position}: field 'principal_attributes.{key}': expected a string of at most "
                f"{MAX_ATTRIBUTE_CHARS} characters or an integer, got {value!r:.80}"
            )
    _check_int(position, item, "duration_s", 1, None)
    _check_int(position, item, "hour_utc", 0, 23)
    _check_int(position, item, "now_ms", 0, None)
    if "usual_duration_s" in item:
        _check_int(position, item, "usual_duration_s", 1, None)
    posture = item.get("device_posture")
    if posture not in _POSTURE_CODES:
        raise ValueError(
            f"item {position}: field 'device_posture': expected one of {list(DEVICE_POSTURES)}, got {posture!r}"
        )
    return dict(item)


def _is_attribute_value(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and len(value) <= MAX_ATTRIBUTE_CHARS)


def _check_int(position: int, item: Mapping, name: str, low: int, high: int | None) -> None:
    value = item.get(name)
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not valid:
        limit = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"item {position}: field {name!r}: expected an integer {limit}, got {value!r}")


__all__ = ["RiskScorer"]
