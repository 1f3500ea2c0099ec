"""Functions behind `jitgate policy validate` and `jitgate policy test`.

Each returns the process exit code and prints problems without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from actors.policy.bundle import PolicyBundle, PolicyBundleError


def validate_main(bundle_dir: Path) -> int:
    """Parse the bundle and validate its policies against the schema, without running the test cases."""
    try:
        bundle = PolicyBundle.load(bundle_dir, run_tests=False)
    except PolicyBundleError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"bundle {bundle.version}: {len(bundle.policies)} policies valid")
    return 0


def test_main(bundle_dir: Path) -> int:
    """Run every test case of the bundle, print PASS or FAIL per case and a summary; 1 if any case failed."""
    try:
        bundle = PolicyBundle.load(bundle_dir, run_tests=False)
    except PolicyBundleError as error:
        print(error, file=sys.stderr)
        return 1
    results = bundle.run_test_cases()
    for result in results:
        print(result.describe())
    failed = sum(1 for result in results if not result.passed)
    print(f"bundle {bundle.version}: {len(results) - failed} passed, {failed} failed")
    if not results:
        print(f"no test cases found under {Path(bundle_dir) / 'tests'}", file=sys.stderr)
        return 1
    return 1 if failed else 0
