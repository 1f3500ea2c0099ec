"""Decide access requests with the Cedar policies of a loaded bundle.

One access request becomes up to two Cedar evaluations, with the principal as a
`User` entity, the resource as a `Resource` entity and the request details in
the context:

1. `Action::"request"`: is the principal eligible at all? Not allowed -> `deny`.
2. The maximum duration: the smallest `@max_duration_s` annotation among the
   permit policies that allowed step 1, capped by the caller's global maximum.
   A longer requested duration -> `deny` naming the maximum (never a clamp).
3. `Action::"auto_approve"`: allowed -> `allow`, otherwise -> `review` with the
   largest `@approvals` annotation among the permits of step 1 and the forbids
   that blocked step 3 (default 1).

Cedar has no floating-point numbers, so the risk score (0-100) reaches the
policies as `context.risk_tenths`, an integer 0-1000: the score times ten,
rounded down. A policy threshold such as `risk_tenths < 500` is then exact for
any score given to one decimal.

A Cedar evaluation error fails closed: `request` denies, `auto_approve` leads to
review, and `review` is not eligible.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import cedarpy

from actors.policy.reads import PolicyReads, VariableReads, bucket

if TYPE_CHECKING:
    from actors.policy.bundle import AttributeSpec, PolicyBundle

Effect = Literal["allow", "deny", "review"]
AttributeValue = str | bool | int | list[str]

ROLES = ("read", "write", "admin")
DEVICE_POSTURES = ("managed", "unmanaged", "unknown")
SENSITIVITIES = ("low", "medium", "high", "critical", "unknown")
MAX_ID_CHARS = 1024
MAX_ERROR_CHARS = 400

# Entity and action names the engine sends; a bundle schema must declare them.
USER_TYPE = "User"
RESOURCE_TYPE = "Resource"
ACTION_REQUEST = "request"
ACTION_AUTO_APPROVE = "auto_approve"
ACTION_REVIEW = "review"

DEFAULT_CACHE_SIZE = 20_000


class PolicyInputError(ValueError):
    """An access request that the policy engine cannot evaluate (missing, unknown or invalid field)."""


def policy_shard(resource: str, shards: int) -> int:
    """Return the PolicyActor shard (0 .. shards-1) for a resource.

    CRC-32 is stable across processes and Python versions, unlike `hash()`.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return zlib.crc32(resource.encode("utf-8")) % shards


def risk_to_tenths(risk_score: float) -> int:
    """Convert a 0-100 risk score to the integer `context.risk_tenths` (0-1000), rounded down.

    The small epsilon keeps scores such as 29.3, whose binary value times ten is
    292.99999..., in their own tenth.
    """
    return min(1000, max(0, math.floor(risk_score * 10 + 1e-9)))


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """One access request as the policies see it."""

    principal: str
    principal_attributes: Mapping[str, AttributeValue]
    resource: str
    resource_attributes: Mapping[str, AttributeValue]
    role: str
    duration_s: int
    risk_score: float
    device_posture: str
    hour_utc: int
    source: str

    def __post_init__(self) -> None:
        _check_id("principal", self.principal)
        _check_id("resource", self.resource)
        if not _is_mapping(self.principal_attributes):
            raise PolicyInputError(f"principal_attributes must be a mapping, got {type(self.principal_attributes).__name__}")
        if not _is_mapping(self.resource_attributes):
            raise PolicyInputError(f"resource_attributes must be a mapping, got {type(self.resource_attributes).__name__}")
        if self.role not in ROLES:
            raise PolicyInputError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not _is_int(self.duration_s) or self.duration_s <= 0:
            raise PolicyInputError(f"duration_s must be a positive integer, got {self.duration_s!r}")
        if not _is_real(self.risk_score) or not 0.0 <= self.risk_score <= 100.0:
            raise PolicyInputError(f"risk_score must be a number from 0 to 100, got {self.risk_score!r}")
        if self.device_posture not in DEVICE_POSTURES:
            raise PolicyInputError(
                f"device_posture must be one of {', '.join(DEVICE_POSTURES)}, got {self.device_posture!r}"
            )
        if not _is_int(self.hour_utc) or not 0 <= self.hour_utc <= 23:
            raise PolicyInputError(f"hour_utc must be an integer from 0 to 23, got {self.hour_utc!r}")
        if not isinstance(self.source, str) or not self.source:
            raise PolicyInputError(f"source must be a non-empty string, got {self.source!r}")
        sensitivity = self.resource_attributes.get("sensitivity")
        if sensitivity is not None and sensitivity not in SENSITIVITIES:
            raise PolicyInputError(
                f"resource_attributes.sensitivity must be one of {', '.join(SENSITIVITIES)}, got {sensitivity!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyInput:
        """Build an input from a plain dict with exactly the dataclass fields."""
        if not _is_mapping(data):
            raise PolicyInputError(f"a policy input must be a mapping, got {type(data).__name__}")
        if data.keys() != _INPUT_FIELD_SET:
            unknown = sorted(set(data) - _INPUT_FIELD_SET)
            if unknown:
                raise PolicyInputError(f"unknown policy input field(s): {', '.join(unknown)}")
            missing = [name for name in _INPUT_FIELDS if name not in data]
            raise PolicyInputError(f"missing policy input field(s): {', '.join(missing)}")
        return cls(*_input_values(data))

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "principal_attributes": dict(self.principal_attributes),
            "resource": self.resource,
            "resource_attributes": dict(self.resource_attributes),
            "role": self.role,
            "duration_s": self.duration_s,
            "risk_score": self.risk_score,
            "device_posture": self.device_posture,
            "hour_utc": self.hour_utc,
            "source": self.source,
        }


_INPUT_FIELDS = tuple(f.name for f in fields(PolicyInput))
_INPUT_FIELD_SET = frozenset(_INPUT_FIELDS)
# Field values of a dict, in the order of the PolicyInput constructor.
_input_values = operator.itemgetter(*_INPUT_FIELDS)


def _risk_tenths(item: PolicyInput) -> int:
    return risk_to_tenths(item.risk_score)


# The value of each context attribute for an input.
_CONTEXT_GETTERS: dict[str, Callable[[PolicyInput], Any]] = {
    "role": operator.attrgetter("role"),
    "duration_s": operator.attrgetter("duration_s"),
    "risk_tenths": _risk_tenths,
    "device_posture": operator.attrgetter("device_posture"),
    "hour_utc": operator.attrgetter("hour_utc"),
    "source": operator.attrgetter("source"),
}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The policy layer's decision on one access request.

    `max_duration_s` is the allowed maximum for an eligible request (also on the
    deny for a too-long duration) and 0 when no policy makes the request eligible. `required_approvals` is at least 1 for `review`
    and 0 otherwise. `reasons` is a tuple because decisions are shared through
    the cache and must not be changed by a caller.
    """

    effect: Effect
    reasons: tuple[str, ...]
    max_duration_s: int
    required_approvals: int
    policy_version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "reasons": list(self.reasons),
            "max_duration_s": self.max_duration_s,
            "required_approvals": self.required_approvals,
            "policy_version": self.policy_version,
        }


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    size: int = 0


# A cache key: principal id (None when no policy compares it), the principal's attributes,
# resource id (or None), the resource's attributes, and the context values. Only what the
# bundle's policies read is in it (see `actors.policy.reads`), numbers that the policies only
# compare with constants as the index of their interval between those constants.
EvaluationKey = tuple[str | None, tuple, str | None, tuple, tuple]

# The context record of `request` and `auto_approve`.
CONTEXT_ATTRIBUTES = ("role", "duration_s", "risk_tenths", "device_posture", "hour_utc", "source")
CONTEXT_TYPES = {"duration_s": "Long", "risk_tenths": "Long", "hour_utc": "Long"}


class _KeyBuilder:
    """Build the evaluation keys of one bundle from what its policies read.

    Every declared entity attribute is validated and coerced, read or not, so an invalid
    input fails whatever the policies read.
    """

    def __init__(self, bundle: PolicyBundle, reads: PolicyReads) -> None:
        self.principal_id = reads.principal.entity_id
        self.resource_id = reads.resource.entity_id
        self.user_specs = _attribute_key_specs(bundle.user_attributes, reads.principal, "principal_attributes")
        self.resource_specs = _attribute_key_specs(bundle.resource_attributes, reads.resource, "resource_attributes")
        self.context_specs = tuple(
            (_CONTEXT_GETTERS[name], reads.context.cut_points(name) if CONTEXT_TYPES.get(name) == "Long" else None)
            for name in CONTEXT_ATTRIBUTES
            if reads.context.reads(name)
        )

    def key(self, item: PolicyInput) -> EvaluationKey:
        return self.keys([item])[0]

    def keys(self, items: Sequence[PolicyInput]) -> list[EvaluationKey]:
        """Return the keys of `items`, computing the key part of each attributes mapping once.

        Callers usually pass one mapping object for all requests on a resource, so the
        parts are looked up by id(), which stays valid while `items` references the mappings.
        """
        principal_parts: dict[int, tuple] = {}
        resource_parts: dict[int, tuple] = {}
        keys = []
        for item in items:
            principal_part = principal_parts.get(id(item.principal_attributes))
            if principal_part is None:
                principal_part = _attribute_key(self.user_specs, item.principal_attributes)
                principal_parts[id(item.principal_attributes)] = principal_part
            resource_part = resource_parts.get(id(item.resource_attributes))
            if resource_part is None:
                resource_part = _attribute_key(self.resource_specs, item.resource_attributes)
                resource_parts[id(item.resource_attributes)] = resource_part
            context = tuple([
                value_of(item) if cut_points is None else bucket(value_of(item), cut_points)
                for value_of, cut_points in self.context_specs
            ])
            keys.append((
                item.principal if self.principal_id else None,
                principal_part,
                item.resource if self.resource_id else None,
                resource_part,
                context,
            ))
        return keys


# (name, spec, read by the policies, cut points or None for the exact value, name in errors)
_AttributeKeySpec = tuple[str, "AttributeSpec", bool, tuple[int, ...] | None, str]


def _attribute_key_specs(
    declared: Mapping[str, AttributeSpec], reads: VariableReads, where: str
) -> tuple[_AttributeKeySpec, ...]:
    return tuple(
        (
            name,
            spec,
            reads.reads(name),
            reads.cut_points(name) if spec.cedar_type == "Long" else None,
            f"{where}.{name}",
        )
        for name, spec in declared.items()
    )


def _attribute_key(specs: tuple[_AttributeKeySpec, ...], values: Mapping[str, AttributeValue]) -> tuple:
    key = []
    for name, spec, read, cut_points, where in specs:
        value = values.get(name)
        if value is None:
            if spec.required:
                raise PolicyInputError(f"{where} is missing and the policy schema requires it")
            continue
        if not (type(value) is str and spec.cedar_type == "String"):
            value = spec.coerce(value, where)
        if read:
            key.append((name, value if cut_points is None else bucket(value, cut_points)))
    return tuple(key)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """The decision of one evaluation, before the parts that use the request's own values.

    `decision` applies to a request whose duration is at most `cap_s`. `cap_s` is None when
    the request is not eligible. When `describe` is set, the reason at `describe_index`
    names values of the request (role, resource, risk, posture) and is written per request.
    `exact` marks reasons that quote Cedar errors, which can name the evaluated request's
    entity ids and attributes, so the outcome holds only for an identical full input.
    """

    decision: PolicyDecision
    cap_s: int | None = None
    cap_policy: str | None = None
    describe: Callable[[PolicyInput], str] | None = None
    describe_index: int = 0
    exact: bool = False


@dataclass(slots=True)
class _Evaluation:
    """One Cedar evaluation, made with the values of `item`, the first request with its key."""

    key: EvaluationKey | None
    item: PolicyInput
    principal_attributes: tuple[tuple[str, Any], ...]
    resource_attributes: tuple[tuple[str, Any], ...]
    context_json: str
    outcome: _Outcome | None = None
    indices: list[int] = field(default_factory=list)


class PolicyEngine:
    """Evaluate access requests against one policy bundle, in batches, with an LRU cache.

    Requests that agree on everything the policies read share one evaluation, in a batch
    and through the cache. With `key_on_reads=False`, the key is every value the policies
    could read instead: ids, declared attributes and the exact context.
    Not thread-safe: the PolicyActor calls it from one thread.
    """

    def __init__(
        self,
        bundle: PolicyBundle,
        *,
        global_max_duration_s: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
        key_on_reads: bool = True,
    ) -> None:
        if not _is_int(global_max_duration_s) or global_max_duration_s <= 0:
            raise ValueError(f"global_max_duration_s must be a positive integer, got {global_max_duration_s!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 (no cache) or more, got {cache_size}")
        self._global_max_duration_s = global_max_duration_s
        self._cache_size = cache_size
        self._key_on_reads = key_on_reads
        self._cache: OrderedDict[EvaluationKey, _Outcome] = OrderedDict()
        self._stats = CacheStats()
        self._set_bundle(bundle)

    @property
    def bundle(self) -> PolicyBundle:
        return self._bundle

    @property
    def policy_version(self) -> str:
        return self._bundle.version

    @property
    def global_max_duration_s(self) -> int:
        return self._global_max_duration_s

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        """Switch to another bundle and drop every cached decision of the old one."""
        self._set_bundle(bundle)
        self.clear_cache()

    def _set_bundle(self, bundle: PolicyBundle) -> None:
        self._bundle = bundle
        self._full_keys = _KeyBuilder(bundle, PolicyReads.everything())
        self._keys = _KeyBuilder(bundle, bundle.decision_reads) if self._key_on_reads else self._full_keys

    def clear_cache(self) -> None:
        self._cache.clear()

    def cache_stats(self) -> CacheStats:
        return CacheStats(self._stats.hits, self._stats.misses, len(self._cache))

    def decide(self, item: PolicyInput) -> PolicyDecision:
        return self.decide_batch([item])[0]

    def decide_batch(self, items: Sequence[PolicyInput]) -> list[PolicyDecision]:
        """Decide many access requests with two Cedar batch calls (`request`, then `auto_approve`).

        Requests with equal evaluation keys are evaluated once, and outcomes are read from
        and stored in the cache. A principal or resource id that comes with different
        attributes in one batch costs two more calls per variant.
        """
        decisions: list[PolicyDecision | None] = [None] * len(items)
        pending: dict[EvaluationKey, _Evaluation] = {}
        cache = self._cache
        for index, (item, key) in enumerate(zip(items, self._keys.keys(items), strict=True)):
            outcome = cache.get(key)
            if outcome is not None:
                cache.move_to_end(key)
                self._stats.hits += 1
                decisions[index] = self._render(outcome, item)
                continue
            evaluation = pending.get(key)
            if evaluation is None:
                self._stats.misses += 1
                evaluation = self._new_evaluation(key, item)
                pending[key] = evaluation
            evaluation.indices.append(index)

        if pending:
            self._evaluate(list(pending.values()))
            self._apply(list(pending.values()), items, decisions)
        return decisions  # type: ignore[return-value]

    def _apply(
        self, evaluations: list[_Evaluation], items: Sequence[PolicyInput], decisions: list[PolicyDecision | None]
    ) -> None:
        """Write the outcomes of evaluated keys into `decisions` and the cache."""
        others: list[int] = []
        for evaluation in evaluations:
            outcome = evaluation.outcome
            assert outcome is not None
            if outcome.exact:
                # The reasons quote errors of the first request, so the others are evaluated on their own.
                first, *rest = evaluation.indices
                decisions[first] = self._render(outcome, items[first])
                others.extend(rest)
                continue
            self._store(evaluation.key, outcome)
            for index in evaluation.indices:
                decisions[index] = self._render(outcome, items[index])
        if others:
            self._decide_on_full_keys(items, others, decisions)

    def _decide_on_full_keys(
        self, items: Sequence[PolicyInput], indices: list[int], decisions: list[PolicyDecision | None]
    ) -> None:
        """Decide the requests at `indices`, one evaluation per full key, without the cache."""
        evaluations: dict[EvaluationKey, _Evaluation] = {}
        for index in indices:
            key = self._full_keys.key(items[index])
            evaluation = evaluations.get(key)
            if evaluation is None:
                evaluation = self._new_evaluation(key, items[index])
                evaluations[key] = evaluation
            evaluation.indices.append(index)
        self._evaluate(list(evaluations.values()))
        for evaluation in evaluations.values():
            assert evaluation.outcome is not None
            for index in evaluation.indices:
                decisions[index] = self._render(evaluation.outcome, items[index])

    def _new_evaluation(self, key: EvaluationKey | None, item: PolicyInput) -> _Evaluation:
        bundle = self._bundle
        return _Evaluation(
            key=key,
            item=item,
            principal_attributes=_entity_attributes(
                bundle.user_attributes, item.principal_attributes, "principal_attributes"
            ),
            resource_attributes=_entity_attributes(
                bundle.resource_attributes, item.resource_attributes, "resource_attributes"
            ),
            context_json=_context_json(item),
        )

    def _render(self, outcome: _Outcome, item: PolicyInput) -> PolicyDecision:
        """Return the decision of `outcome` for `item`: the duration check and the reasons that name its values."""
        if outcome.cap_s is not None and item.duration_s > outcome.cap_s:
            return self._duration_denial(item, outcome.cap_s, outcome.cap_policy)
        decision = outcome.decision
        if outcome.describe is None:
            return decision
        reasons = list(decision.reasons)
        reasons[outcome.describe_index] = outcome.describe(item)
        return PolicyDecision(
            decision.effect, tuple(reasons), decision.max_duration_s, decision.required_approvals,
            decision.policy_version,
        )

    def may_review(
        self,
        reviewer: str,
        reviewer_attributes: Mapping[str, AttributeValue],
        request: PolicyInput,
    ) -> tuple[bool, list[str]]:
        """Evaluate `Action::"review"`: may `reviewer` review `request`?

        Returns whether the reviewer is eligible and the reasons naming the determining policies.
        The ledger also rejects self-review, whatever the policies decide.
        """
        _check_id("reviewer", reviewer)
        bundle = self._bundle
        reviewer_attrs = _entity_attributes(bundle.user_attributes, reviewer_attributes, "reviewer_attributes")
        requester_attrs = _entity_attributes(bundle.user_attributes, request.principal_attributes, "principal_attributes")
        resource_attrs = _entity_attributes(
            bundle.resource_attributes, request.resource_attributes, "resource_attributes"
        )
        entities = [
            _entity_json(USER_TYPE, reviewer, reviewer_attrs),
            _entity_json(RESOURCE_TYPE, request.resource, resource_attrs),
        ]
        if request.principal != reviewer:
            entities.append(_entity_json(USER_TYPE, request.principal, requester_attrs))
        context = {
            "role": request.role,
            "requester": {"__entity": {"type": USER_TYPE, "id": request.principal}},
        }
        cedar_request = {
            "principal": {"type": USER_TYPE, "id": reviewer},
            "action": {"type": "Action", "id": ACTION_REVIEW},
            "resource": {"type": RESOURCE_TYPE, "id": request.resource},
            "context": json.dumps(context),
        }
        result = cedarpy.is_authorized_batch(
            [cedar_request], bundle.policy_set, "[" + ",".join(entities) + "]", schema=bundle.schema
        )[0]
        target = f"{request.role} on {request.resource}"
        if result.diagnostics.errors:
            return False, [f"policy evaluation failed: {error}" for error in _errors(result)]
        if result.allowed:
            return True, [f"eligible reviewer by {pid}" for pid in _policy_ids(result)]
        forbids = self._forbid_reasons(_policy_ids(result), "rejected by")
        if forbids:
            return False, forbids
        return False, [f"no policy permits {reviewer} to review {target}"]

    def evaluation_key(self, item: PolicyInput) -> EvaluationKey:
        """Return the cache key of `item`: the values the bundle's policies read, as a hashable tuple.

        The risk score enters as `risk_tenths`, the value the policies see. Raises
        PolicyInputError when an entity attribute is missing or has the wrong type.
        """
        return self._keys.key(item)

    def _store(self, key: EvaluationKey | None, outcome: _Outcome) -> None:
        if self._cache_size == 0 or key is None:
            return
        self._cache[key] = outcome
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _evaluate(self, evaluations: list[_Evaluation]) -> None:
        # One entity uid can carry different attributes in one batch (a principal
        # whose groups changed between requests). Such evaluations go to a later
        # round, because Cedar needs each uid once per entity set.
        for round_evaluations in _split_conflicting(evaluations):
            self._evaluate_round(round_evaluations)

    def _evaluate_round(self, evaluations: list[_Evaluation]) -> None:
        bundle = self._bundle
        # Parsed once and reused by both Cedar calls below.
        entities = cedarpy.Entities.from_json_str(_batch_entities(evaluations), bundle.schema)

        request_results = cedarpy.is_authorized_batch(
            [_cedar_request(ev, ACTION_REQUEST) for ev in evaluations],
            bundle.policy_set,
            entities,
            schema=bundle.schema,
        )
        # `auto_approve` runs for every eligible request, also one over its maximum duration,
        # because the outcome is shared by requests with other durations.
        eligible: list[tuple[_Evaluation, list[str]]] = []
        for evaluation, result in zip(evaluations, request_results, strict=True):
            denial = self._request_denial(result)
            if denial is not None:
                evaluation.outcome = denial
            else:
                eligible.append((evaluation, _policy_ids(result)))

        if not eligible:
            return
        auto_results = cedarpy.is_authorized_batch(
            [_cedar_request(ev, ACTION_AUTO_APPROVE) for ev, _ in eligible],
            bundle.policy_set,
            entities,
            schema=bundle.schema,
        )
        for (evaluation, permits), result in zip(eligible, auto_results, strict=True):
            evaluation.outcome = self._grant_or_review(permits, result)

    def _request_denial(self, result: cedarpy.AuthzResult) -> _Outcome | None:
        version = self._bundle.version
        errors = _errors(result)
        if errors:
            reasons = tuple(f"policy evaluation failed: {error}" for error in errors)
            return _Outcome(PolicyDecision("deny", reasons, 0, 0, version), exact=True)
        if result.allowed:
            return None
        reasons = self._forbid_reasons(_policy_ids(result), "denied by")
        if reasons:
            return _Outcome(PolicyDecision("deny", tuple(reasons), 0, 0, version))
        return _Outcome(PolicyDecision("deny", ("",), 0, 0, version), describe=_no_permit_reason)

    def _max_duration(self, permit_ids: list[str]) -> tuple[int, str | None]:
        """Return the smallest cap among the matched permits and the global maximum, and the policy that set it."""
        cap_s, cap_policy = self._global_max_duration_s, None
        for pid in sorted(permit_ids):
            policy_cap_s = self._bundle.policies[pid].max_duration_s
            if policy_cap_s is None:
                continue
            # On a tie with the global maximum, name the policy: it is the more specific source.
            if policy_cap_s < cap_s or (cap_policy is None and policy_cap_s == cap_s):
                cap_s, cap_policy = policy_cap_s, pid
        return cap_s, cap_policy

    def _duration_denial(self, item: PolicyInput, cap_s: int, cap_policy: str | None) -> PolicyDecision:
        source = f"policy {cap_policy}" if cap_policy is not None else "global maximum"
        reason = (
            f"requested duration {item.duration_s} s exceeds the maximum of {cap_s} s "
            f"for {item.role} on {item.resource} ({source})"
        )
        return PolicyDecision("deny", (reason,), cap_s, 0, self._bundle.version)

    def _grant_or_review(self, permits: list[str], result: cedarpy.AuthzResult) -> _Outcome:
        version = self._bundle.version
        cap_s, cap_policy = self._max_duration(permits)
        eligible_reason = "eligible by " + ", ".join(permits)
        if result.allowed and not result.diagnostics.errors:
            reasons = (eligible_reason, "auto-approved by " + ", ".join(_policy_ids(result)))
            return _Outcome(PolicyDecision("allow", reasons, cap_s, 0, version), cap_s, cap_policy)

        reasons = [eligible_reason]
        blockers: list[str] = []
        if result.diagnostics.errors:
            reasons.extend(f"auto-approval evaluation failed: {error}" for error in _errors(result))
        else:
            blockers = [pid for pid in _policy_ids(result) if self._bundle.policies[pid].effect == "forbid"]
            reasons.extend(self._forbid_reasons(blockers, "auto-approval blocked by"))
        describe = None
        if len(reasons) == 1:
            describe = _no_auto_approval_reason
            reasons.append("")

        approvals, approvals_policy = 1, None
        for pid in permits + blockers:
            policy_approvals = self._bundle.policies[pid].approvals
            if policy_approvals is not None and policy_approvals > approvals:
                approvals, approvals_policy = policy_approvals, pid
        if approvals_policy is not None:
            reasons.append(f"{approvals} approvals required by {approvals_policy}")
        decision = PolicyDecision("review", tuple(reasons), cap_s, approvals, version)
        return _Outcome(
            decision, cap_s, cap_policy, describe=describe, describe_index=1,
            exact=bool(result.diagnostics.errors),
        )

    def _forbid_reasons(self, policy_ids: Sequence[str], prefix: str) -> list[str]:
        reasons = []
        for pid in policy_ids:
            policy = self._bundle.policies[pid]
            if policy.effect != "forbid":
                continue
            reasons.append(f"{prefix} {pid}: {policy.reason}" if policy.reason else f"{prefix} {pid}")
        return reasons


def _no_permit_reason(item: PolicyInput) -> str:
    return f"no policy permits requesting {item.role} on {item.resource}"


def _no_auto_approval_reason(item: PolicyInput) -> str:
    return (
        f"no policy auto-approves {item.role} on {item.resource} at risk "
        f"{risk_to_tenths(item.risk_score) / 10:.1f} with device posture {item.device_posture}"
    )


def _errors(result: cedarpy.AuthzResult) -> list[str]:
    """Return the evaluation errors sorted and cut to MAX_ERROR_CHARS, because some quote the whole entity set."""
    return [
        error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "..."
        for error in sorted(result.diagnostics.errors)
    ]


def _policy_ids(result: cedarpy.AuthzResult) -> list[str]:
    """Return the determining policy ids sorted, because Cedar returns them in no fixed order."""
    return sorted(result.diagnostics.reasons)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_mapping(value: object) -> bool:
    # The exact type test first, because isinstance against an ABC is slow.
    return type(value) is dict or isinstance(value, Mapping)


def _is_real(value: object) -> bool:
    return type(value) is float or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise PolicyInputError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_CHARS:
        raise PolicyInputError(f"{name} is {len(value)} characters long, the limit is {MAX_ID_CHARS}")


def _entity_attributes(
    declared: Mapping[str, AttributeSpec], values: Mapping[str, AttributeValue], where: str
) -> tuple[tuple[str, Any], ...]:
    """Coerce the attributes the schema declares to their Cedar types; others are ignored.

    Returns sorted (name, value) pairs with sets as sorted tuples, so that equal
    attribute sets give equal cache keys.
    """
    result = []
    for name, spec in declared.items():
        if name not in values or values[name] is None:
            if spec.required:
                raise PolicyInputError(f"{where}.{name} is missing and the policy schema requires it")
            continue
        result.append((name, spec.coerce(values[name], f"{where}.{name}")))
    result.sort()
    return tuple(result)


def _context_json(item: PolicyInput) -> str:
    return json.dumps({name: _CONTEXT_GETTERS[name](item) for name in CONTEXT_ATTRIBUTES})


def _cedar_request(evaluation: _Evaluation, action: str) -> dict[str, Any]:
    return {
        "principal": {"type": USER_TYPE, "id": evaluation.item.principal},
        "action": {"type": "Action", "id": action},
        "resource": {"type": RESOURCE_TYPE, "id": evaluation.item.resource},
        "context": evaluation.context_json,
    }


def _entity_json(entity_type: str, entity_id: str, attributes: tuple[tuple[str, Any], ...]) -> str:
    attrs = {name: list(value) if isinstance(value, tuple) else value for name, value in attributes}
    return json.dumps({"uid": {"type": entity_type, "id": entity_id}, "attrs": attrs, "parents": []})


def _batch_entities(evaluations: list[_Evaluation]) -> str:
    """Build the entity set of one batch as a JSON string, each principal and resource once."""
    users: dict[str, tuple] = {}
    resources: dict[str, tuple] = {}
    for evaluation in evaluations:
        users.setdefault(evaluation.item.principal, evaluation.principal_attributes)
        resources.setdefault(evaluation.item.resource, evaluation.resource_attributes)
    parts = [_entity_json(USER_TYPE, uid, attrs) for uid, attrs in users.items()]
    parts.extend(_entity_json(RESOURCE_TYPE, uid, attrs) for uid, attrs in resources.items())
    return "[" + ",".join(parts) + "]"


def _split_conflicting(evaluations: list[_Evaluation]) -> list[list[_Evaluation]]:
    """Split evaluations into rounds in which each entity uid has one attribute set."""
    users: dict[str, tuple] = {}
    resources: dict[str, tuple] = {}
    for evaluation in evaluations:
        principal, principal_attrs = evaluation.item.principal, evaluation.principal_attributes
        resource, resource_attrs = evaluation.item.resource, evaluation.resource_attributes
        if users.setdefault(principal, principal_attrs) != principal_attrs:
            break
        if resources.setdefault(resource, resource_attrs) != resource_attrs:
            break
    else:
        return [evaluations]

    rounds: list[tuple[list[_Evaluation], dict[tuple[str, str], tuple]]] = []
    for evaluation in evaluations:
        entity_attributes = {
            (USER_TYPE, evaluation.item.principal): evaluation.principal_attributes,
            (RESOURCE_TYPE, evaluation.item.resource): evaluation.resource_attributes,
        }
        for members, seen in rounds:
            if all(seen.get(uid, attrs) == attrs for uid, attrs in entity_attributes.items()):
                members.append(evaluation)
                seen.update(entity_attributes)
                break
        else:
            rounds.append(([evaluation], dict(entity_attributes)))
    return [members for members, _ in rounds]
