"""In-process measurements: risk scoring kernels and cedarpy alone. Imports no Ray and no Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.domain.directory import ResourceCatalog
from actors.policy.bundle import PolicyBundle
from actors.policy.engine import PolicyEngine, PolicyInput
from actors.risk.actor import RiskScorer
from actors.risk.model import COLUMNS, RiskModel
from actors.risk.scoring import DEFAULT_USUAL_DURATION_S, DEVICE_POSTURES, RiskContext, score_batch
from cluster.decisions import DecisionItem
from actors.risk.cli import _rows_per_second
from jitgate.replay import PlannedRequest

RISK_BATCH_SIZES = (1, 512, 4096, 65_536)
POLICY_BATCH = 1000


def rows_per_second(run: Callable[[], object], batch_rows: int, min_time_s: float = 0.2, rounds: int = 3) -> float:
    """Return the best rows/s of `rounds` timed loops of at least `min_time_s` each, after one warm-up call."""
    return _rows_per_second(run, batch_rows, min_time_s, rounds)


def risk_columns(plans: Sequence[PlannedRequest], rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Return raw model columns and context arrays for `rows` rows, cycling through the plans."""
    chosen = [plans[i % len(plans)] for i in range(rows)]
    columns = {name: np.fromiter((int(p.principal_attributes.get(name, 0)) for p in chosen), np.int64, rows) for name in COLUMNS if name != "resource"}
    columns["resource"] = np.fromiter((int(p.resource.removeprefix("amazon:")) for p in chosen), np.int64, rows)
    posture_codes = {name: code for code, name in enumerate(DEVICE_POSTURES)}
    context = {
        "device_posture": np.fromiter((posture_codes[p.context.device_posture.value] for p in chosen), np.int8, rows),
        "hour_utc": np.fromiter((p.context.hour_utc for p in chosen), np.int16, rows),
        "duration_s": np.fromiter((p.duration_s for p in chosen), np.float64, rows),
        "usual_duration_s": np.full(rows, DEFAULT_USUAL_DURATION_S, dtype=np.float64),
        "recent_requests": np.zeros(rows, dtype=np.int64),
    }
    return columns, context


@dataclass(frozen=True)
class RiskKernelRates:
    batch_rows: int
    score_rows_per_s: float
    score_factors_rows_per_s: float
    python_loop_rows_per_s: float


def risk_kernel_rates(model_path: str, plans: Sequence[PlannedRequest], batch_sizes: Sequence[int] = RISK_BATCH_SIZES) -> list[RiskKernelRates]:
    """Time `score_batch` on prebuilt index arrays, with and without top factors, and the per-row Python loop."""
    model = RiskModel.load(model_path)
    columns, context = risk_columns(plans, max(batch_sizes))
    index_all = model.encode_columns(columns)
    context_all = RiskContext.from_mapping(context)
    rates = []
    for batch_rows in batch_sizes:
        index = np.ascontiguousarray(index_all[:batch_rows])
        batch_context = RiskContext(**{name: values[:batch_rows] for name, values in context_all.__dict__.items()})
        index_rows = index.tolist()
        rates.append(
            RiskKernelRates(
                batch_rows=batch_rows,
                score_rows_per_s=rows_per_second(lambda: score_batch(model, index, batch_context, with_factors=False), batch_rows),
                score_factors_rows_per_s=rows_per_second(lambda: score_batch(model, index, batch_context), batch_rows),
                # The loop computes the model's approval probability only, the largest part of a score.
                python_loop_rows_per_s=rows_per_second(lambda: model.approval_probability_python(index_rows), batch_rows),
            )
        )
    return rates


def decision_items(plans: Sequence[PlannedRequest], catalog: ResourceCatalog, now_ms: int) -> list[DecisionItem]:
    """Build the service's decision items of the planned requests, as `AccessService` does."""
    return [
        DecisionItem(
            principal=plan.principal, principal_attributes=dict(plan.principal_attributes), resource=plan.resource,
            resource_entry=catalog.lookup(plan.resource), role=plan.role, duration_s=plan.duration_s,
            device_posture=plan.context.device_posture.value, hour_utc=plan.context.hour_utc,
            source=plan.context.source, now_ms=now_ms,
        )
        for plan in plans
    ]


def policy_inputs(model_path: str, items: Sequence[DecisionItem]) -> list[PolicyInput]:
    """Score the items with an in-process RiskScorer and return the inputs the PolicyActor would get."""
    scorer = RiskScorer(model_path)
    inputs = []
    for start in range(0, len(items), POLICY_BATCH):
        batch = items[start : start + POLICY_BATCH]
        scores = scorer._score_items([item.risk_input() for item in batch])  # noqa: SLF001 - same path as score(), without an event loop
        inputs.extend(PolicyInput.from_dict(item.policy_input(score["risk_score"])) for item, score in zip(batch, scores))
    return inputs


@dataclass(frozen=True)
class CedarFloor:
    access_requests: int
    cedar_requests: int
    elapsed_s: float
    effects: dict[str, int]

    @property
    def access_requests_per_s(self) -> float:
        return self.access_requests / self.elapsed_s

    @property
    def cedar_requests_per_s(self) -> float:
        return self.cedar_requests / self.elapsed_s


def cedarpy_floor(policy_dir: str, global_max_duration_s: int, inputs: Sequence[PolicyInput], batch: int = POLICY_BATCH) -> CedarFloor:
    """Time `cedarpy.is_authorized_batch` alone on the Cedar requests and entities the engine builds.

    Per batch of `batch` access requests, as the engine evaluates them: the entity set parsed
    once, one `request` call for all, one `auto_approve` call for the eligible ones. Building
    the request dicts and entity JSON is done before the clock starts.
    """
    import cedarpy

    from actors.policy import engine as engine_module

    bundle = PolicyBundle.load(policy_dir)
    engine = PolicyEngine(bundle, global_max_duration_s=global_max_duration_s, cache_size=0)
    prepared = []
    for start in range(0, len(inputs), batch):
        # The engine's own builders, so that the entities and requests are byte for byte the same.
        evaluations = [engine._new_evaluation(None, item) for item in inputs[start : start + batch]]  # noqa: SLF001
        entities_json = engine_module._batch_entities(evaluations)  # noqa: SLF001
        request_action = [engine_module._cedar_request(ev, engine_module.ACTION_REQUEST) for ev in evaluations]  # noqa: SLF001
        auto_action = [engine_module._cedar_request(ev, engine_module.ACTION_AUTO_APPROVE) for ev in evaluations]  # noqa: SLF001
        prepared.append((entities_json, request_action, auto_action))

    cedar_requests = 0
    effects = {"allow": 0, "deny_or_review": 0}
    started = time.perf_counter()
    for entities_json, request_action, auto_action in prepared:
        entities = cedarpy.Entities.from_json_str(entities_json, bundle.schema)
        eligible = cedarpy.is_authorized_batch(request_action, bundle.policy_set, entities, schema=bundle.schema)
        second = [request for request, result in zip(auto_action, eligible) if result.allowed]
        approved = cedarpy.is_authorized_batch(second, bundle.policy_set, entities, schema=bundle.schema) if second else []
        cedar_requests += len(request_action) + len(second)
        allowed = sum(1 for result in approved if result.allowed)
        effects["allow"] += allowed
        effects["deny_or_review"] += len(request_action) - allowed
    elapsed_s = time.perf_counter() - started
    return CedarFloor(access_requests=len(inputs), cedar_requests=cedar_requests, elapsed_s=elapsed_s, effects=effects)


def engine_rate(policy_dir: str, global_max_duration_s: int, inputs: Sequence[PolicyInput], batch: int = POLICY_BATCH) -> dict[str, Any]:
    """Time `PolicyEngine.decide_batch` with a cold cache on the same inputs, for comparison with cedarpy alone."""
    engine = PolicyEngine(PolicyBundle.load(policy_dir), global_max_duration_s=global_max_duration_s)
    started = time.perf_counter()
    for start in range(0, len(inputs), batch):
        engine.decide_batch(inputs[start : start + batch])
    elapsed_s = time.perf_counter() - started
    stats = engine.cache_stats()
    return {"decisions_per_s": len(inputs) / elapsed_s, "cache_hits": stats.hits, "evaluations": stats.misses}
