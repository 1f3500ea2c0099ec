"""PolicyActor: a thin Ray-facing shell around PolicyEngine.

The caller makes it remote, for example
`ray.remote(PolicyActor).options(max_restarts=-1, max_task_retries=-1, num_cpus=0)`,
and picks the shard of a resource with `policy_shard(resource, shards)`. The
class imports no Ray, so it also runs in-process. A restarted actor reloads the
bundle from `bundle_dir` in `__init__`. So a bundle switched with `load_bundle`
is lost on restart unless the caller creates the actor with the new directory.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from typing import Any

from actors.policy.bundle import PolicyBundle
from actors.policy.engine import DEFAULT_CACHE_SIZE, PolicyEngine, PolicyInput

logger = logging.getLogger(__name__)


class PolicyActor:
    """Hold the active policy bundle of one shard and decide batches of access requests."""

    def __init__(
        self,
        bundle_dir: str,
        global_max_duration_s: int,
        shard: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._shard = shard
        bundle = PolicyBundle.load(bundle_dir)
        self._engine = PolicyEngine(bundle, global_max_duration_s=global_max_duration_s, cache_size=cache_size)
        logger.info("policy shard %d started with bundle %s from %s", shard, bundle.version, bundle_dir)

    def decide(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Decide a batch of access requests given as dicts with the PolicyInput fields.

        Items that get the same decision object from the engine share one result dict, so
        callers must not modify the dicts. Raises PolicyInputError (a ValueError) for the
        first invalid item, naming its index.
        """
        table, indexes = self._decide_indexed(items)
        return [table[index] for index in indexes]

    def decide_packed(self, items: bytes) -> bytes:
        """Decide a batch of `decide` items pickled as one list, and return the outcomes pickled.

        The result unpickles to `(table, indexes)`: `table` lists the distinct decision dicts
        of the batch and `indexes[i]` is the position in `table` of item i's decision. One
        bytes value per direction keeps Ray's per-object serialization cost out of bulk calls.
        The bytes must come from a trusted caller, because unpickling runs code. Raises as
        `decide` does.
        """
        table, indexes = self._decide_indexed(pickle.loads(items))
        return pickle.dumps((table, indexes), protocol=pickle.HIGHEST_PROTOCOL)

    def _decide_indexed(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
        """Decide the items: returns the distinct decision dicts and each item's index into them."""
        inputs = []
        for index, item in enumerate(items):
            try:
                inputs.append(PolicyInput.from_dict(item))
            except (ValueError, TypeError) as error:
                raise type(error)(f"item {index}: {error}") from None
        table: list[dict[str, Any]] = []
        # Keyed by id(): the decisions stay alive in `decisions` for the whole loop.
        index_by_decision: dict[int, int] = {}
        indexes: list[int] = []
        decisions = self._engine.decide_batch(inputs)
        for decision in decisions:
            index = index_by_decision.get(id(decision))
            if index is None:
                index = index_by_decision[id(decision)] = len(table)
                table.append(decision.to_dict())
            indexes.append(index)
        return table, indexes

    def may_review(
        self, reviewer: str, reviewer_attributes: Mapping[str, Any], item: dict[str, Any]
    ) -> dict[str, Any]:
        """Return {"eligible": bool, "reasons": [...], "policy_version": str} for `reviewer` on request `item`."""
        eligible, reasons = self._engine.may_review(reviewer, reviewer_attributes, PolicyInput.from_dict(item))
        return {"eligible": eligible, "reasons": reasons, "policy_version": self._engine.policy_version}

    def load_bundle(self, bundle_dir: str) -> str:
        """Validate and test the bundle in `bundle_dir`, then switch to it and return its version.

        On any failure the current bundle stays active and PolicyBundleError is raised.
        """
        old_version = self._engine.policy_version
        try:
            bundle = PolicyBundle.load(bundle_dir)
        except Exception:
            logger.warning(
                "policy shard %d rejected the bundle in %s and keeps %s", self._shard, bundle_dir, old_version,
                exc_info=True,
            )
            raise
        self._engine.replace_bundle(bundle)
        logger.info("policy shard %d switched from bundle %s to %s", self._shard, old_version, bundle.version)
        return bundle.version

    def version(self) -> str:
        return self._engine.policy_version

    def cache_stats(self) -> dict[str, int]:
        stats = self._engine.cache_stats()
        return {"hits": stats.hits, "misses": stats.misses, "size": stats.size}
