"""Find what the policies of a bundle read, so that the engine can cache decisions on exactly that.

Two access requests that agree on every value the policies read get the same Cedar results,
so they can share one evaluation. The analysis walks the JSON form of each policy (Cedar's
EST) and records, per variable (`principal`, `resource`, `context`):

- the entity id, when a policy uses `principal` or `resource` other than through `.attr` or
  `has attr` (`principal == context.requester`, `principal in ...`, a scope constraint);
- each attribute read through `.attr` or tested with `has attr`;
- for an attribute whose every use compares it with an integer literal
  (`context.risk_tenths < 500`), the cut points of those comparisons. Two values between the
  same cut points give the same result in every comparison, so the key contains the index of
  that interval.

Any other use of an attribute counts its exact value: arithmetic, a comparison between two
attributes, a function or method call. `context` used as a whole (`context == {...}`) makes
every context attribute count. An expression the walker does not know (a template slot, an
operator of a later Cedar version) makes every value count, as in a full evaluation key.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

VARIABLES = ("principal", "resource", "context")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
# The comparison with the operands swapped: `500 > x` is `x < 500`.
MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
BINARY_OPERATORS = frozenset({
    "&&", "||", "+", "-", "*", "in", "contains", "containsAll", "containsAny", "getTag", "hasTag",
})
UNARY_OPERATORS = frozenset({"!", "neg", "isEmpty"})


@dataclass(frozen=True, slots=True)
class VariableReads:
    """The parts of one variable that the policies read.

    `attributes` maps an attribute name to its sorted cut points, or to None when the
    policies need its exact value. With `every_attribute`, all attributes count exactly,
    whether listed or not. `entity_id` is always False for `context`.
    """

    entity_id: bool = False
    every_attribute: bool = False
    attributes: Mapping[str, tuple[int, ...] | None] = field(default_factory=dict)

    def reads(self, name: str) -> bool:
        return self.every_attribute or name in self.attributes

    def cut_points(self, name: str) -> tuple[int, ...] | None:
        """Return the cut points of a bucketed attribute, None when its exact value counts."""
        if self.every_attribute:
            return None
        return self.attributes.get(name)


EVERYTHING = VariableReads(entity_id=True, every_attribute=True)


@dataclass(frozen=True, slots=True)
class PolicyReads:
    """The parts of the principal, the resource and the context that a set of policies reads."""

    principal: VariableReads
    resource: VariableReads
    context: VariableReads

    @classmethod
    def everything(cls) -> PolicyReads:
        """Return the reads that make every value count: the key of a full evaluation."""
        return cls(EVERYTHING, EVERYTHING, VariableReads(every_attribute=True))


def bucket(value: int, cut_points: tuple[int, ...]) -> int:
    """Return the index of the interval between cut points that contains `value`."""
    return bisect_right(cut_points, value)


def analyze_policies(policies: Iterable[Mapping[str, Any]]) -> PolicyReads:
    """Return what the given policies (Cedar JSON EST, one dict each) read, merged over all of them."""
    collector = _Collector()
    for policy in policies:
        collector.policy(policy)
    return collector.result()


class _UnknownExpression(Exception):
    """An EST node the walker does not know; the caller then counts every value."""


class _Collector:
    def __init__(self) -> None:
        self.entity_ids: set[str] = set()
        self.whole: set[str] = set()
        self.exact: dict[str, set[str]] = {name: set() for name in VARIABLES}
        # Attributes tested with `has`. Presence is part of every key, so `has` alone does not
        # stop an attribute from being bucketed.
        self.present: dict[str, set[str]] = {name: set() for name in VARIABLES}
        self.cuts: dict[str, dict[str, set[int]]] = {name: {} for name in VARIABLES}
        self.unknown = False

    def result(self) -> PolicyReads:
        if self.unknown:
            return PolicyReads.everything()
        return PolicyReads(*(self.variable_reads(name) for name in VARIABLES))

    def variable_reads(self, variable: str) -> VariableReads:
        attributes: dict[str, tuple[int, ...] | None] = {}
        for name, points in self.cuts[variable].items():
            attributes[name] = tuple(sorted(points))
        for name in self.exact[variable] | (self.present[variable] - attributes.keys()):
            attributes[name] = None
        return VariableReads(
            entity_id=variable in self.entity_ids and variable != "context",
            every_attribute=variable in self.whole,
            attributes=attributes,
        )

    def policy(self, policy: Mapping[str, Any]) -> None:
        for variable in ("principal", "resource"):
            constraint = policy.get(variable, {"op": "All"})
            if constraint.get("op") != "All":
                # `==`, `in` and `is` constraints compare the entity (its id or type).
                self.entity_ids.add(variable)
        try:
            for condition in policy.get("conditions", ()):
                self.walk(condition["body"])
        except (_UnknownExpression, KeyError, TypeError, ValueError, AttributeError):
            self.unknown = True

    def walk(self, expression: Any) -> None:
        if not isinstance(expression, Mapping) or len(expression) != 1:
            raise _UnknownExpression(expression)
        ((operator, body),) = expression.items()
        if operator == "Value":
            return
        if operator == "Var":
            self.read_whole(body)
        elif operator == ".":
            self.attribute(body, self.exact)
        elif operator == "has":
            self.attribute(body, self.present)
        elif operator in COMPARISONS:
            self.comparison(operator, body)
        elif operator in BINARY_OPERATORS:
            self.walk(body["left"])
            self.walk(body["right"])
        elif operator in UNARY_OPERATORS:
            self.walk(body["arg"])
        elif operator == "like":
            self.walk(body["left"])
        elif operator == "is":
            self.walk(body["left"])
            if "in" in body:
                self.walk(body["in"])
        elif operator == "if-then-else":
            for part in ("if", "then", "else"):
                self.walk(body[part])
        elif operator == "Set":
            for element in body:
                self.walk(element)
        elif operator == "Record":
            for value in body.values():
                self.walk(value)
        elif isinstance(body, list):
            # Extension functions and methods: `ip("10.0.0.1")`, `decimal(...)`, `x.isInRange(y)`.
            for argument in body:
                self.walk(argument)
        else:
            raise _UnknownExpression(expression)

    def read_whole(self, variable: str) -> None:
        if variable == "context":
            self.whole.add(variable)
        elif variable in VARIABLES:
            # An entity used as a value (`==`, `in`, `is`, tags) shows its id and type. Its
            # parents and tags show too, but the engine sends every entity with none.
            self.entity_ids.add(variable)
        elif variable != "action":
            raise _UnknownExpression(variable)

    def attribute(self, body: Mapping[str, Any], reads: dict[str, set[str]]) -> None:
        variable = _variable(body["left"])
        if variable is None:
            # An attribute of a record or an expression (`context.r.s`): the inner read counts exactly.
            self.walk(body["left"])
        elif variable in VARIABLES:
            reads[variable].add(body["attr"])
        elif variable != "action":
            raise _UnknownExpression(variable)

    def comparison(self, operator: str, body: Mapping[str, Any]) -> None:
        left, right = body["left"], body["right"]
        read, literal = _attribute_read(left), _integer_literal(right)
        if read is None or literal is None:
            read, literal, operator = _attribute_read(right), _integer_literal(left), MIRRORED[operator]
        if read is None or literal is None:
            self.walk(left)
            self.walk(right)
            return
        variable, name = read
        points = self.cuts[variable].setdefault(name, set())
        # Integers only: `x < c` and `x >= c` change between c - 1 and c, `x <= c` and `x > c`
        # between c and c + 1, and `==`, `!=` at both.
        if operator in ("<", ">=", "==", "!="):
            points.add(literal)
        if operator in ("<=", ">", "==", "!="):
            points.add(literal + 1)


def _variable(expression: Any) -> str | None:
    if isinstance(expression, Mapping) and len(expression) == 1 and "Var" in expression:
        return expression["Var"]
    return None


def _attribute_read(expression: Any) -> tuple[str, str] | None:
    """Return (variable, attribute) for `variable.attribute` on principal, resource or context."""
    if not isinstance(expression, Mapping) or len(expression) != 1 or "." not in expression:
        return None
    body = expression["."]
    variable = _variable(body.get("left"))
    if variable not in VARIABLES or not isinstance(body.get("attr"), str):
        return None
    return variable, body["attr"]


def _integer_literal(expression: Any) -> int | None:
    if not isinstance(expression, Mapping) or len(expression) != 1 or "Value" not in expression:
        return None
    value = expression["Value"]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
