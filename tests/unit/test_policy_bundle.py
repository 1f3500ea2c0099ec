"""Loading, validation and test cases of policy bundles, and the `jitgate policy` CLI functions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from actors.policy import PolicyBundle, PolicyBundleError
from actors.policy import cli as policy_cli

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "configs" / "policies"


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    """A writable copy of the default bundle."""
    return Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "policies"))


def load_problems(directory: Path, **kwargs) -> list[str]:
    with pytest.raises(PolicyBundleError) as raised:
        PolicyBundle.load(directory, **kwargs)
    return raised.value.problems


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_default_bundle_loads_and_passes_tests():
    bundle = PolicyBundle.load(DEFAULT_BUNDLE)
    assert re.fullmatch(r"1\.0\.0\+[0-9a-f]{12}", bundle.version)
    assert len(bundle.policies) == 16
    assert len(bundle.test_cases) >= 30
    assert all(result.passed for result in bundle.run_test_cases())


def test_default_bundle_declared_attributes():
    bundle = PolicyBundle.load(DEFAULT_BUNDLE, run_tests=False)
    assert {name: spec.cedar_type for name, spec in bundle.user_attributes.items()} == {
        "groups": "Set<String>",
        "department": "String",
        "manager": "String",
        "title": "String",
        "on_call": "Boolean",
    }
    assert bundle.resource_attributes["sensitivity"].required is True
    assert bundle.resource_attributes["provisioner"].required is False


def test_policy_annotations_are_read():
    bundle = PolicyBundle.load(DEFAULT_BUNDLE, run_tests=False)
    admin = bundle.policies["admin-on-call-or-sre"]
    assert (admin.effect, admin.max_duration_s, admin.approvals) == ("permit", 3600, 2)
    assert admin.actions == frozenset({"request"})
    assert admin.file == "eligibility.cedar"
    assert bundle.policies["risk-too-high"].reason == "risk score is 95 or higher"


def test_version_changes_with_policies_not_tests(bundle_dir):
    original = PolicyBundle.load(bundle_dir).version
    (bundle_dir / "tests" / "review.yaml").write_text("cases: []\n")
    assert PolicyBundle.load(bundle_dir).version == original
    edit(bundle_dir / "eligibility.cedar", '@max_duration_s("28800")', '@max_duration_s("28000")')
    changed = PolicyBundle.load(bundle_dir, run_tests=False).version
    assert changed != original
    assert changed.startswith("1.0.0+")


def test_schema_violation_names_file_and_policy(bundle_dir):
    edit(bundle_dir / "guardrails.cedar", "context.risk_tenths >= 950", "context.risk >= 950")
    problems = load_problems(bundle_dir)
    assert len(problems) == 1
    assert problems[0].startswith("guardrails.cedar: policy risk-too-high fails schema validation")
    assert "attribute `risk` in context" in problems[0]


def test_type_error_names_policy(bundle_dir):
    edit(bundle_dir / "auto_approve.cedar", "context.risk_tenths < 500", 'context.risk_tenths < "500"')
    problems = load_problems(bundle_dir)
    assert problems[0].startswith("auto_approve.cedar: policy auto-read-low-risk fails schema validation")


def test_parse_error_names_file_and_line(bundle_dir):
    (bundle_dir / "extra.cedar").write_text(
        '@id("fine")\npermit (principal, action, resource);\n\n'
        '// a comment with ; and "quotes"\n@id("broken")\n'
        'permit (principal, action, resource) when { context.role == "a;b" && ( };\n'
    )
    problems = load_problems(bundle_dir)
    assert problems == ["extra.cedar: line 5: parse error: unexpected token `}`"]


def test_missing_id_is_rejected(bundle_dir):
    (bundle_dir / "extra.cedar").write_text('permit (principal, action == Action::"review", resource);\n')
    assert load_problems(bundle_dir) == ['extra.cedar: the #1 policy has no @id("...") annotation']


def test_duplicate_id_names_both_files(bundle_dir):
    (bundle_dir / "extra.cedar").write_text(
        '@id("risk-too-high")\nforbid (principal, action == Action::"request", resource);\n'
    )
    assert load_problems(bundle_dir) == ["guardrails.cedar: policy id 'risk-too-high' is already used in extra.cedar"]


def test_unknown_annotation_is_rejected(bundle_dir):
    edit(bundle_dir / "eligibility.cedar", '@max_duration_s("14400")\npermit', '@max_duration("14400")\npermit')
    problems = load_problems(bundle_dir)
    assert problems[0].startswith("eligibility.cedar: policy read-sensitive-team has unknown annotation(s) @max_duration")


@pytest.mark.parametrize("value", ["0", "-5", "1h", ""])
def test_invalid_max_duration_is_rejected(bundle_dir, value):
    edit(bundle_dir / "eligibility.cedar", '@max_duration_s("28800")', f'@max_duration_s("{value}")')
    problems = load_problems(bundle_dir)
    assert problems == [
        f"eligibility.cedar: policy read-non-sensitive: @max_duration_s({value!r}) must be a positive integer"
    ]


def test_obligation_on_wrong_policy_is_rejected(bundle_dir):
    edit(bundle_dir / "guardrails.cedar", '@id("risk-too-high")', '@id("risk-too-high")\n@max_duration_s("60")')
    edit(bundle_dir / "review.cedar", '@id("no-self-review")', '@id("no-self-review")\n@approvals("2")')
    problems = load_problems(bundle_dir)
    assert 'guardrails.cedar: policy risk-too-high: @max_duration_s only works on permit policies for Action::"request"' in problems
    assert any(p.startswith("review.cedar: policy no-self-review: @approvals only works") for p in problems)


def test_failing_test_case_names_file_and_case(bundle_dir):
    edit(bundle_dir / "auto_approve.cedar", "context.risk_tenths < 500", "context.risk_tenths < 200")
    problems = load_problems(bundle_dir)
    assert len(problems) == 1
    assert problems[0].startswith(
        "tests/replay.yaml: test case 'replay risk 49.9 is allowed' failed: "
        "expected effect='allow', got effect='review', reasons ["
    )


def test_failing_test_case_skipped_without_run_tests(bundle_dir):
    edit(bundle_dir / "auto_approve.cedar", "context.risk_tenths < 500", "context.risk_tenths < 200")
    assert PolicyBundle.load(bundle_dir, run_tests=False).version.startswith("1.0.0+")


def test_invalid_test_input_names_case(bundle_dir):
    (bundle_dir / "tests" / "extra.yaml").write_text(
        "cases:\n  - name: bad role\n    input: {role: owner}\n    expect: {effect: deny}\n"
    )
    problems = load_problems(bundle_dir)
    assert problems[0].startswith("tests/extra.yaml: test case 'bad role' has an invalid input:")


def test_invalid_expect_names_case(bundle_dir):
    (bundle_dir / "tests" / "extra.json").write_text(json.dumps({
        "defaults": {"principal": "a", "principal_attributes": {}, "resource": "r",
                     "resource_attributes": {"owner_team": "x", "sensitivity": "low"}, "role": "read",
                     "duration_s": 60, "risk_score": 1, "device_posture": "managed", "hour_utc": 1,
                     "source": "api"},
        "cases": [{"name": "typo", "expect": {"efect": "allow"}}],
    }))
    problems = load_problems(bundle_dir)
    assert problems == [
        "tests/extra.json: test case 'typo': expect must set effect and may set only "
        "effect, max_duration_s, required_approvals, reasons_include"
    ]


def test_schema_context_mismatch_is_rejected(bundle_dir):
    edit(bundle_dir / "schema.cedarschema.json", '"hour_utc": {"type": "Long"},', "")
    problems = load_problems(bundle_dir)
    context_problems = [p for p in problems if 'context of Action::"request" must declare' in p]
    assert len(context_problems) == 1
    assert context_problems[0].startswith("schema.cedarschema.json: ")


def test_unsupported_attribute_type_is_rejected(bundle_dir):
    schema = json.loads((bundle_dir / "schema.cedarschema.json").read_text())
    schema[""]["entityTypes"]["User"]["shape"]["attributes"]["boss"] = {"type": "Entity", "name": "User"}
    (bundle_dir / "schema.cedarschema.json").write_text(json.dumps(schema))
    problems = load_problems(bundle_dir)
    assert problems[0].startswith("schema.cedarschema.json: User.boss has a type the engine cannot fill")


def test_missing_files_are_reported(tmp_path):
    tmp_path.joinpath("empty").mkdir()
    problems = load_problems(tmp_path / "empty")
    assert "bundle.yaml: file not found" in problems
    assert any(p.startswith("schema.cedarschema.json: file not found") for p in problems)


def test_validate_main_prints_version(capsys):
    assert policy_cli.validate_main(DEFAULT_BUNDLE) == 0
    output = capsys.readouterr().out
    assert re.fullmatch(r"bundle 1\.0\.0\+[0-9a-f]{12}: 16 policies valid\n", output)


def test_validate_main_prints_errors(bundle_dir, capsys):
    edit(bundle_dir / "guardrails.cedar", "context.risk_tenths >= 950", "context.risk >= 950")
    assert policy_cli.validate_main(bundle_dir) == 1
    captured = capsys.readouterr()
    assert "guardrails.cedar: policy risk-too-high fails schema validation" in captured.err
    assert "Traceback" not in captured.err


def test_test_main_all_pass(capsys):
    assert policy_cli.test_main(DEFAULT_BUNDLE) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "PASS replay risk 97 is denied" in lines
    assert re.fullmatch(r"bundle 1\.0\.0\+[0-9a-f]{12}: \d+ passed, 0 failed", lines[-1])


def test_test_main_reports_failure(bundle_dir, capsys):
    edit(bundle_dir / "guardrails.cedar", "context.risk_tenths >= 950", "context.risk_tenths >= 990")
    assert policy_cli.test_main(bundle_dir) == 1
    output = capsys.readouterr().out
    assert "FAIL replay risk 97 is denied: expected effect='deny'" in output
    assert "got effect='review'" in output
    assert re.search(r"\d+ passed, [1-9]\d* failed", output)
