"""Decide access requests in batches: risk scores from a RiskScorer, then policy per resource shard."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from actors.domain.directory import ResourceEntry
from cluster.backends import policy_shard_of

# The risk model learned resources as the numeric RESOURCE ids of the access log, which
# replayed requests carry as `amazon:<id>`; other names fall into the model's unknown slot.
MODEL_RESOURCE_PREFIX = "amazon:"


@dataclass(frozen=True)
class DecisionItem:
    principal: str
    principal_attributes: dict[str, Any]
    resource: str
    resource_entry: ResourceEntry
    role: str
    duration_s: int
    device_posture: str
    hour_utc: int
    source: str
    now_ms: int

    def risk_input(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "principal_attributes": {k: v for k, v in self.principal_attributes.items() if isinstance(v, str)},
            "resource": self.resource.removeprefix(MODEL_RESOURCE_PREFIX),
            "role": self.role,
            "duration_s": self.duration_s,
            "device_posture": self.device_posture,
            "hour_utc": self.hour_utc,
            "now_ms": self.now_ms,
            "usual_duration_s": self.resource_entry.usual_duration_s,
        }

    def policy_input(self, risk_score: float) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "principal_attributes": self.principal_attributes,
            "resource": self.resource,
            "resource_attributes": self.resource_entry.attributes(),
            "role": self.role,
            "duration_s": self.duration_s,
            "risk_score": risk_score,
            "device_posture": self.device_posture,
            "hour_utc": self.hour_utc,
            "source": self.source,
        }


async def decide_batch(backends: Any, items: list[DecisionItem], policy_shards: int) -> list[dict[str, Any]]:
    """Score all items in one risk call, then evaluate policy with one call per resource shard."""
    scores = await backends.risk("score", [item.risk_input() for item in items])
    by_shard: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_shard[policy_shard_of(item.resource, policy_shards)].append(index)

    async def run_shard(shard: int, indexes: list[int]) -> None:
        inputs = [items[i].policy_input(scores[i]["risk_score"]) for i in indexes]
        for i, decision in zip(indexes, await backends.policy(shard, "decide", inputs)):
            results[i] = decision

    results: list[dict[str, Any]] = [{}] * len(items)
    await asyncio.gather(*(run_shard(shard, indexes) for shard, indexes in by_shard.items()))
    return [
        {
            "effect": policy["effect"],
            "reasons": list(policy["reasons"]),
            "risk_score": score["risk_score"],
            "factors": score.get("factors", []),
            "policy_version": policy["policy_version"],
            "model_version": score["model_version"],
            "required_approvals": policy.get("required_approvals", 0) if policy["effect"] == "review" else 0,
            "max_duration_s": policy["max_duration_s"],
        }
        for policy, score in zip(results, scores)
    ]
