"""Load, validate and test a Cedar policy bundle.

A bundle is a directory with:

- `bundle.yaml`: `name`, `version` (a string), optional `description` and
  `tests.global_max_duration_s` (the global maximum the test cases run with,
  12 h by default).
- `schema.cedarschema.json`: the Cedar schema in its JSON form. The engine reads
  the declared `User` and `Resource` attributes from it, so only those reach
  the policies.
- `*.cedar`: the policies. Each policy has a unique `@id("...")`; the optional
  annotations `@reason`, `@description`, `@max_duration_s` and `@approvals` carry
  the text and obligations the engine uses.
- `tests/*.yaml` (or `.yml`, `.json`): test cases run through the engine.

The bundle version is `<version>+<first 12 hex digits of the SHA-256>` of the
schema and policy files, so any change to what decides gives a new version and
a change to the test cases alone does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy
import yaml

from actors.policy.engine import (
    ACTION_AUTO_APPROVE,
    ACTION_REQUEST,
    ACTION_REVIEW,
    RESOURCE_TYPE,
    USER_TYPE,
    PolicyEngine,
    PolicyInput,
    PolicyInputError,
)
from actors.policy.reads import PolicyReads, analyze_policies

BUNDLE_FILE = "bundle.yaml"
SCHEMA_FILE = "schema.cedarschema.json"
TESTS_DIR = "tests"
TEST_FILE_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_TEST_GLOBAL_MAX_DURATION_S = 12 * 3600

KNOWN_ANNOTATIONS = ("id", "reason", "description", "max_duration_s", "approvals")
POLICY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
MAX_ERROR_CHARS = 400


class PolicyBundleError(Exception):
    """A bundle that cannot be used: each problem names the file, the policy or test case, and what failed."""

    def __init__(self, bundle_dir: Path | str, problems: Sequence[str]) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"policy bundle {self.bundle_dir} is invalid:\n{lines}")

    def __reduce__(self):
        # Ray pickles exceptions raised in actors; the default rebuilds from the message only.
        return (type(self), (str(self.bundle_dir), self.problems))


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """An entity attribute declared in the schema: its Cedar type and whether it is required."""

    name: str
    cedar_type: str  # "String", "Long", "Boolean" or "Set<String>"
    required: bool

    def coerce(self, value: Any, where: str) -> Any:
        """Convert a request value to this Cedar type, or raise PolicyInputError naming `where`."""
        if self.cedar_type == "String":
            if isinstance(value, str):
                return value
        elif self.cedar_type == "Boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif self.cedar_type == "Long":
            if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
                return value
            if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value):
                return int(value)
        elif self.cedar_type == "Set<String>":
            if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
                return tuple(sorted(set(value)))
        raise PolicyInputError(f"{where} must be a Cedar {self.cedar_type}, got {value!r}")


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One policy of the bundle with the annotations the engine reads."""

    policy_id: str
    file: str
    effect: str  # "permit" or "forbid"
    actions: frozenset[str] | None  # None: the policy applies to every action
    reason: str | None = None
    description: str | None = None
    max_duration_s: int | None = None
    approvals: int | None = None

    def applies_to(self, action: str) -> bool:
        return self.actions is None or action in self.actions


@dataclass(frozen=True, slots=True)
class BundleTestCase:
    """A test case of the bundle: a decision case, or a review case when `reviewer` is set."""

    name: str
    file: str
    input: PolicyInput
    expect: Mapping[str, Any]
    reviewer: str | None = None
    reviewer_attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BundleTestResult:
    case: BundleTestCase
    passed: bool
    expected: str
    actual: str

    def describe(self) -> str:
        if self.passed:
            return f"PASS {self.case.name}"
        return f"FAIL {self.case.name}: expected {self.expected}, got {self.actual}"


DECISION_EXPECT_KEYS = ("effect", "max_duration_s", "required_approvals", "reasons_include")
REVIEW_EXPECT_KEYS = ("eligible", "reasons_include")


@dataclass(frozen=True, slots=True, eq=False)
class PolicyBundle:
    """A validated policy bundle, ready for the engine."""

    directory: Path
    name: str
    version: str
    schema: cedarpy.Schema
    policy_set: cedarpy.PolicySet
    policies: Mapping[str, PolicyInfo]
    user_attributes: Mapping[str, AttributeSpec]
    resource_attributes: Mapping[str, AttributeSpec]
    test_cases: tuple[BundleTestCase, ...]
    test_global_max_duration_s: int
    # The values that the policies for `request` and `auto_approve` read. The engine keys its
    # decision cache on them.
    decision_reads: PolicyReads = field(default_factory=PolicyReads.everything)

    @classmethod
    def load(cls, bundle_dir: Path | str, *, run_tests: bool = True) -> PolicyBundle:
        """Parse and validate the bundle in `bundle_dir` and, unless `run_tests` is false, run its test cases.

        Raises PolicyBundleError listing every problem found.
        """
        directory = Path(bundle_dir)
        bundle = _BundleLoader(directory).load()
        if run_tests:
            failures = [result for result in bundle.run_test_cases() if not result.passed]
            if failures:
                raise PolicyBundleError(
                    directory,
                    [f"{TESTS_DIR}/{r.case.file}: test case {r.case.name!r} failed: "
                     f"expected {r.expected}, got {r.actual}" for r in failures],
                )
        return bundle

    def run_test_cases(self) -> list[BundleTestResult]:
        """Run every test case through a fresh engine (no cache) and return the results in file order."""
        engine = PolicyEngine(self, global_max_duration_s=self.test_global_max_duration_s, cache_size=0)
        decision_cases = [case for case in self.test_cases if case.reviewer is None]
        decisions = dict(zip(
            (case.name for case in decision_cases),
            engine.decide_batch([case.input for case in decision_cases]),
            strict=True,
        ))
        results = []
        for case in self.test_cases:
            if case.reviewer is None:
                decision = decisions[case.name]
                actual = {
                    "effect": decision.effect,
                    "max_duration_s": decision.max_duration_s,
                    "required_approvals": decision.required_approvals,
                }
                reasons = list(decision.reasons)
            else:
                eligible, reasons = engine.may_review(case.reviewer, case.reviewer_attributes, case.input)
                actual = {"eligible": eligible}
            results.append(_compare(case, actual, reasons))
        return results


def _compare(case: BundleTestCase, actual: Mapping[str, Any], reasons: list[str]) -> BundleTestResult:
    expected_parts, actual_parts, passed = [], [], True
    for key, expected in case.expect.items():
        if key == "reasons_include":
            missing = [text for text in expected if not any(text in reason for reason in reasons)]
            if missing:
                passed = False
                expected_parts.append(f"reasons including {missing!r}")
                actual_parts.append(f"reasons {reasons!r}")
            continue
        expected_parts.append(f"{key}={expected!r}")
        actual_parts.append(f"{key}={actual[key]!r}")
        if actual[key] != expected:
            passed = False
    if not passed and "reasons_include" not in case.expect:
        actual_parts.append(f"reasons {reasons!r}")
    return BundleTestResult(case, passed, ", ".join(expected_parts), ", ".join(actual_parts))


class _BundleLoader:
    """Collect every problem of one bundle directory before giving up, so one run shows them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[str] = []

    def fail_if_problems(self) -> None:
        if self.problems:
            raise PolicyBundleError(self.directory, self.problems)

    def load(self) -> PolicyBundle:
        if not self.directory.is_dir():
            raise PolicyBundleError(self.directory, [f"{self.directory} is not a directory"])
        metadata = self.read_metadata()
        schema_text, schema, user_attributes, resource_attributes = self.read_schema()
        self.fail_if_problems()

        policy_files = sorted(self.directory.glob("*.cedar"))
        if not policy_files:
            self.problems.append(f"no *.cedar policy files in {self.directory}")
        policies: dict[str, PolicyInfo] = {}
        static_policies: dict[str, Any] = {}
        hasher = hashlib.sha256()
        hasher.update(schema_text.encode())
        for path in policy_files:
            text = path.read_text(encoding="utf-8")
            hasher.update(b"\0" + path.name.encode() + b"\0" + text.encode())
            self.read_policy_file(path.name, text, schema, policies, static_policies)
        self.fail_if_problems()

        policy_set = cedarpy.PolicySet.from_json_str(
            json.dumps({"staticPolicies": static_policies, "templates": {}, "templateLinks": []})
        )
        bundle = PolicyBundle(
            directory=self.directory,
            name=metadata["name"],
            version=f"{metadata['version']}+{hasher.hexdigest()[:12]}",
            schema=schema,
            policy_set=policy_set,
            policies=policies,
            user_attributes=user_attributes,
            resource_attributes=resource_attributes,
            test_cases=(),
            test_global_max_duration_s=metadata["test_global_max_duration_s"],
            decision_reads=analyze_policies(_decision_policies(static_policies.values())),
        )
        self.probe_contexts(bundle)
        self.fail_if_problems()

        test_cases = self.read_test_cases()
        self.fail_if_problems()
        return dataclasses.replace(bundle, test_cases=tuple(test_cases))

    def read_metadata(self) -> dict[str, Any]:
        path = self.directory / BUNDLE_FILE
        metadata = {"name": "", "version": "0", "test_global_max_duration_s": DEFAULT_TEST_GLOBAL_MAX_DURATION_S}
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.problems.append(f"{BUNDLE_FILE}: file not found")
            return metadata
        except yaml.YAMLError as error:
            self.problems.append(f"{BUNDLE_FILE}: invalid YAML: {error}")
            return metadata
        if not isinstance(raw, dict):
            self.problems.append(f"{BUNDLE_FILE}: expected a mapping with name and version")
            return metadata
        unknown = sorted(set(raw) - {"name", "version", "description", "tests"})
        if unknown:
            self.problems.append(f"{BUNDLE_FILE}: unknown key(s) {', '.join(unknown)}")
        for key in ("name", "version"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                self.problems.append(f"{BUNDLE_FILE}: {key} must be a non-empty string, got {raw.get(key)!r}")
            else:
                metadata[key] = raw[key].strip()
        tests = raw.get("tests") or {}
        if not isinstance(tests, dict) or set(tests) - {"global_max_duration_s"}:
            self.problems.append(f"{BUNDLE_FILE}: tests may only set global_max_duration_s, got {tests!r}")
        elif "global_max_duration_s" in tests:
            value = tests["global_max_duration_s"]
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                metadata["test_global_max_duration_s"] = value
            else:
                self.problems.append(
                    f"{BUNDLE_FILE}: tests.global_max_duration_s must be a positive integer, got {value!r}"
                )
        return metadata

    def read_schema(self) -> tuple[str, Any, dict[str, AttributeSpec], dict[str, AttributeSpec]]:
        path = self.directory / SCHEMA_FILE
        try:
            text = path.read_text(encoding="utf-8")
            document = json.loads(text)
            schema = cedarpy.Schema.from_json_str(text)
        except FileNotFoundError:
            self.problems.append(f"{SCHEMA_FILE}: file not found (the schema must be in Cedar's JSON form)")
            return "", None, {}, {}
        except ValueError as error:  # json.JSONDecodeError is a ValueError too
            self.problems.append(f"{SCHEMA_FILE}: invalid schema: {error}")
            return "", None, {}, {}

        namespaces = [name for name in document if name != ""]
        if namespaces:
            self.problems.append(
                f"{SCHEMA_FILE}: namespaces are not supported, declare everything under \"\" "
                f"(found {', '.join(namespaces)})"
            )
        root = document.get("", {})
        common_types = root.get("commonTypes", {})
        entity_types = root.get("entityTypes", {})
        for action in (ACTION_REQUEST, ACTION_AUTO_APPROVE, ACTION_REVIEW):
            if action not in root.get("actions", {}):
                self.problems.append(f"{SCHEMA_FILE}: action {action!r} is missing")
        attributes = []
        for entity_type in (USER_TYPE, RESOURCE_TYPE):
            declaration = entity_types.get(entity_type)
            if declaration is None:
                self.problems.append(f"{SCHEMA_FILE}: entity type {entity_type} is missing")
                attributes.append({})
                continue
            shape = _resolve_type(declaration.get("shape", {"attributes": {}}), common_types)
            specs = {}
            for name, attribute in shape.get("attributes", {}).items():
                cedar_type = _attribute_type(attribute, common_types)
                if cedar_type is None:
                    self.problems.append(
                        f"{SCHEMA_FILE}: {entity_type}.{name} has a type the engine cannot fill from a "
                        "request; use String, Long, Boolean or Set of String"
                    )
                    continue
                specs[name] = AttributeSpec(name, cedar_type, attribute.get("required", True))
            attributes.append(specs)
        return text, schema, attributes[0], attributes[1]

    def read_policy_file(
        self,
        file: str,
        text: str,
        schema: Any,
        policies: dict[str, PolicyInfo],
        static_policies: dict[str, Any],
    ) -> None:
        try:
            est = json.loads(cedarpy.policies_to_json_str(text))
        except ValueError as error:
            self.problems.append(f"{file}: {_locate_parse_error(text, error)}")
            return
        if est.get("templates"):
            self.problems.append(f"{file}: policy templates are not supported")

        file_ids: dict[str, str] = {}
        for positional_id, policy in est.get("staticPolicies", {}).items():
            policy_id = self.read_policy(file, positional_id, policy, policies)
            if policy_id is not None:
                file_ids[positional_id] = policy_id
                static_policies[policy_id] = policy

        validation = cedarpy.validate_policies(text, schema)
        for error in validation.errors:
            policy_id = file_ids.get(error.policy_id) or validation.id_annotations_by_policy_id.get(error.policy_id)
            where = f"policy {policy_id}" if policy_id else "policy"
            message = error.error.replace(f"`{error.policy_id}`", f"`{policy_id}`") if policy_id else error.error
            self.problems.append(f"{file}: {where} fails schema validation: {message}")

    def read_policy(
        self, file: str, positional_id: str, policy: dict[str, Any], policies: dict[str, PolicyInfo]
    ) -> str | None:
        annotations = policy.get("annotations", {})
        policy_id = annotations.get("id")
        if not policy_id:
            self.problems.append(f"{file}: the {_ordinal(positional_id)} policy has no @id(\"...\") annotation")
            return None
        if not POLICY_ID_PATTERN.match(policy_id):
            self.problems.append(
                f"{file}: policy id {policy_id!r} is invalid; use letters, digits, '-', '_', '.' or ':'"
            )
            return None
        if policy_id in policies:
            self.problems.append(f"{file}: policy id {policy_id!r} is already used in {policies[policy_id].file}")
            return None

        unknown = sorted(set(annotations) - set(KNOWN_ANNOTATIONS))
        if unknown:
            self.problems.append(
                f"{file}: policy {policy_id} has unknown annotation(s) {', '.join('@' + a for a in unknown)}; "
                f"known: {', '.join('@' + a for a in KNOWN_ANNOTATIONS)}"
            )
        info = PolicyInfo(
            policy_id=policy_id,
            file=file,
            effect=policy["effect"],
            actions=_policy_actions(policy.get("action", {})),
            reason=annotations.get("reason") or None,
            description=annotations.get("description") or None,
            max_duration_s=self.read_count(file, policy_id, annotations, "max_duration_s"),
            approvals=self.read_count(file, policy_id, annotations, "approvals"),
        )
        if info.max_duration_s is not None and not (info.effect == "permit" and info.applies_to(ACTION_REQUEST)):
            self.problems.append(
                f"{file}: policy {policy_id}: @max_duration_s only works on permit policies for Action::\"request\""
            )
        if info.approvals is not None and not (
            (info.effect == "permit" and info.applies_to(ACTION_REQUEST))
            or (info.effect == "forbid" and info.applies_to(ACTION_AUTO_APPROVE))
        ):
            self.problems.append(
                f"{file}: policy {policy_id}: @approvals only works on permit policies for Action::\"request\" "
                "and forbid policies for Action::\"auto_approve\""
            )
        policies[policy_id] = info
        return policy_id

    def read_count(self, file: str, policy_id: str, annotations: Mapping[str, str], name: str) -> int | None:
        value = annotations.get(name)
        if value is None:
            return None
        if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < 1:
            self.problems.append(f"{file}: policy {policy_id}: @{name}({value!r}) must be a positive integer")
            return None
        return int(value)

    def probe_contexts(self, bundle: PolicyBundle) -> None:
        """Evaluate one placeholder request per action, so a schema context that differs from the engine's fails now."""
        users = {name: _placeholder(spec) for name, spec in bundle.user_attributes.items() if spec.required}
        resources = {name: _placeholder(spec) for name, spec in bundle.resource_attributes.items() if spec.required}
        entities = json.dumps([
            {"uid": {"type": USER_TYPE, "id": "probe"}, "attrs": users, "parents": []},
            {"uid": {"type": RESOURCE_TYPE, "id": "probe"}, "attrs": resources, "parents": []},
        ])
        request_context = {
            "role": "read", "duration_s": 1, "risk_tenths": 0, "device_posture": "managed",
            "hour_utc": 0, "source": "probe",
        }
        review_context = {"role": "read", "requester": {"__entity": {"type": USER_TYPE, "id": "probe"}}}
        contexts = {
            ACTION_REQUEST: request_context,
            ACTION_AUTO_APPROVE: request_context,
            ACTION_REVIEW: review_context,
        }
        requests = [
            {
                "principal": {"type": USER_TYPE, "id": "probe"},
                "action": {"type": "Action", "id": action},
                "resource": {"type": RESOURCE_TYPE, "id": "probe"},
                "context": context,
            }
            for action, context in contexts.items()
        ]
        results = cedarpy.is_authorized_batch(requests, bundle.policy_set, entities, schema=bundle.schema)
        for (action, context), result in zip(contexts.items(), results, strict=True):
            for error in result.diagnostics.errors:
                if "failed to build request" in error or "failed to parse entities" in error:
                    fields = ", ".join(context)
                    self.problems.append(
                        f"{SCHEMA_FILE}: the context of Action::\"{action}\" must declare exactly "
                        f"{fields}: {_shorten(error)}"
                    )

    def read_test_cases(self) -> list[BundleTestCase]:
        tests_dir = self.directory / TESTS_DIR
        if not tests_dir.is_dir():
            return []
        cases: list[BundleTestCase] = []
        names: dict[str, str] = {}
        for path in sorted(p for p in tests_dir.iterdir() if p.suffix in TEST_FILE_SUFFIXES):
            where = f"{TESTS_DIR}/{path.name}"
            try:
                text = path.read_text(encoding="utf-8")
                document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (ValueError, yaml.YAMLError) as error:
                self.problems.append(f"{where}: cannot be parsed: {error}")
                continue
            if not isinstance(document, dict) or not isinstance(document.get("cases"), list):
                self.problems.append(f"{where}: expected a mapping with a list under 'cases'")
                continue
            unknown = sorted(set(document) - {"defaults", "cases"})
            if unknown:
                self.problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
            defaults = document.get("defaults") or {}
            for position, raw in enumerate(document["cases"], start=1):
                case = self.read_test_case(where, path.name, position, raw, defaults)
                if case is None:
                    continue
                if case.name in names:
                    self.problems.append(f"{where}: test case name {case.name!r} is already used in {names[case.name]}")
                    continue
                names[case.name] = where
                cases.append(case)
        return cases

    def read_test_case(
        self, where: str, file: str, position: int, raw: Any, defaults: Mapping[str, Any]
    ) -> BundleTestCase | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            self.problems.append(f"{where}: case {position} needs a mapping with a non-empty name")
            return None
        name = raw["name"]
        unknown = sorted(set(raw) - {"name", "input", "expect", "reviewer", "reviewer_attributes"})
        if unknown:
            self.problems.append(f"{where}: test case {name!r} has unknown key(s) {', '.join(unknown)}")
            return None
        try:
            policy_input = PolicyInput.from_dict({**defaults, **(raw.get("input") or {})})
        except (PolicyInputError, TypeError) as error:
            self.problems.append(f"{where}: test case {name!r} has an invalid input: {error}")
            return None

        expect = raw.get("expect")
        reviewer = raw.get("reviewer")
        allowed, required = (REVIEW_EXPECT_KEYS, "eligible") if reviewer is not None else (DECISION_EXPECT_KEYS, "effect")
        if not isinstance(expect, dict) or required not in expect or set(expect) - set(allowed):
            self.problems.append(
                f"{where}: test case {name!r}: expect must set {required} and may set only {', '.join(allowed)}"
            )
            return None
        reasons_include = expect.get("reasons_include", [])
        if not isinstance(reasons_include, list) or not all(isinstance(text, str) for text in reasons_include):
            self.problems.append(f"{where}: test case {name!r}: reasons_include must be a list of strings")
            return None
        if reviewer is not None and (not isinstance(reviewer, str) or not reviewer):
            self.problems.append(f"{where}: test case {name!r}: reviewer must be a non-empty string")
            return None
        return BundleTestCase(
            name=name,
            file=file,
            input=policy_input,
            expect=expect,
            reviewer=reviewer,
            reviewer_attributes=raw.get("reviewer_attributes") or {},
        )


def _resolve_type(declaration: Mapping[str, Any], common_types: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow references to common types (both the short and the EntityOrCommon form)."""
    for _ in range(16):
        name = declaration.get("name") if declaration.get("type") == "EntityOrCommon" else declaration.get("type")
        if name not in common_types:
            return declaration
        declaration = common_types[name]
    return declaration


def _attribute_type(declaration: Mapping[str, Any], common_types: Mapping[str, Any]) -> str | None:
    resolved = _resolve_type(declaration, common_types)
    kind = resolved.get("name") if resolved.get("type") == "EntityOrCommon" else resolved.get("type")
    kind = (kind or "").removeprefix("__cedar::")
    if kind == "Bool":
        kind = "Boolean"
    if kind in ("String", "Long", "Boolean"):
        return kind
    if kind == "Set" and _attribute_type(resolved.get("element", {}), common_types) == "String":
        return "Set<String>"
    return None


def _policy_actions(constraint: Mapping[str, Any]) -> frozenset[str] | None:
    if constraint.get("op") == "==":
        return frozenset([constraint["entity"]["id"]])
    if constraint.get("op") == "in":
        entities = constraint.get("entities") or [constraint.get("entity")]
        return frozenset(entity["id"] for entity in entities if entity)
    return None


def _decision_policies(policies: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return the policies that can apply to `request` or `auto_approve`.

    Only a scope of `action == Action::"<other action>"` excludes a policy. An `in` scope stays,
    because a schema may put `request` into an action group.
    """
    decision_actions = (ACTION_REQUEST, ACTION_AUTO_APPROVE)
    selected = []
    for policy in policies:
        constraint = policy.get("action", {})
        if constraint.get("op") == "==" and constraint.get("entity", {}).get("id") not in decision_actions:
            continue
        selected.append(policy)
    return selected


def _placeholder(spec: AttributeSpec) -> Any:
    return {"String": "", "Long": 0, "Boolean": False, "Set<String>": []}[spec.cedar_type]


def _ordinal(positional_id: str) -> str:
    number = int(positional_id.removeprefix("policy")) + 1 if positional_id.startswith("policy") else 0
    return f"#{number}" if number else positional_id


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _locate_parse_error(text: str, error: ValueError) -> str:
    """Name the line of the first statement that does not parse, since Cedar's error has no position."""
    for line, statement in _split_statements(text):
        try:
            cedarpy.policies_to_json_str(statement)
        except ValueError as statement_error:
            return f"line {line}: parse error: {statement_error}"
    return f"parse error: {error}"


def _split_statements(text: str) -> list[tuple[int, str]]:
    """Split policy text at top-level semicolons, skipping strings and // comments.

    Returns (line of the first token, statement text) pairs.
    """
    statements: list[tuple[int, str]] = []
    start, start_line, line = 0, 0, 1
    index, in_string = 0, False
    while index < len(text):
        char = text[index]
        if char == "\n":
            line += 1
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            start_line = start_line or line
        elif text.startswith("//", index):
            end = text.find("\n", index)
            index = len(text) if end == -1 else end
            continue
        elif char == ";":
            statements.append((start_line or line, text[start:index + 1]))
            start, start_line = index + 1, 0
        elif not char.isspace():
            start_line = start_line or line
        index += 1
    if text[start:].strip() and start_line:
        statements.append((start_line, text[start:]))
    return statements
