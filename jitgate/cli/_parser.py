"""Argument parser of the `jitgate` command and the parsing of human durations."""

from __future__ import annotations

import argparse
import math
import re

from jitgate.models import DevicePosture, RequestState

DURATION_UNITS_S = {"d": 86_400, "h": 3600, "m": 60, "s": 1}
_DURATION_PATTERN = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_FORMS = "whole seconds (3600) or a number with a unit d, h, m or s (30m, 1h, 1h30m)"


class UsageError(Exception):
    """A command line that cannot be parsed; `main` prints it as one line and exits 2."""


class _ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes `-5m` for an unknown option and reports "expected one argument" for
        # `--duration -5m`. A dash followed by a digit is a value here, so that the value's own
        # check names what is wrong with it.
        self._negative_number_matcher = re.compile(r"^-\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def parse_duration(text: str) -> int:
    """Parse `3600`, `90s`, `30m`, `1h`, `1h30m` or `1d` into whole seconds greater than 0."""
    value = text.strip().lower()
    if value.startswith("-"):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be greater than 0 seconds")
    if value.isascii() and value.isdigit():
        seconds = int(value)
    else:
        match = _DURATION_PATTERN.fullmatch(value)
        if not value or match is None:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use {DURATION_FORMS}")
        seconds = sum(int(amount) * DURATION_UNITS_S[unit] for amount, unit in zip(match.groups(), "dhms") if amount)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be greater than 0 seconds")
    return seconds


def parse_timeout(text: str) -> float:
    """Parse a timeout in seconds greater than 0, such as `10` or `2.5`."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: use a number of seconds, such as 10 or 2.5") from None
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: must be a finite number of seconds greater than 0")
    return seconds


def parse_rate(text: str) -> float:
    """Parse a rate in requests per second, `100` or `100/s`; 0 means unlimited."""
    value = text.strip().lower().removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: use requests per second, e.g. 200 or 200/s") from None
    if rate < 0 or rate != rate or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: must be 0 (unlimited) or a positive number")
    return rate


def parse_positive_int(text: str) -> int:
    """Parse a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be at least 1")
    return value


def _port(text: str) -> int:
    value = parse_positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be between 1 and 65535")
    return value


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS keeps a value given before the verb from being reset by the verb's own parser.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile", default=argparse.SUPPRESS, help="profile of credentials.yaml to use (default: admin, and replay for the replay verb)"
    )
    common.add_argument("--api-url", default=argparse.SUPPRESS, help="base URL of the HTTP API")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _ArgumentParser(
        prog="jitgate",
        description="Just-in-time access approval: run a local cluster, request, review and check access.",
        epilog="Exit codes: 0 success, 1 failure (and `check`: not allowed), 2 invalid usage or input.",
        parents=[common],
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_ArgumentParser)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help_text, description=help_text, parents=[common])

    up = add("up", "start a local cluster (Ray, Redis, the HTTP API) and write credentials.yaml")
    up.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    up.add_argument("--port", type=_port, help="port of the HTTP API (default: 8000)")
    add("down", "stop the local cluster started by `jitgate up`")
    add("status", "show the state of the local cluster")

    _add_request_verbs(add)
    _add_grant_verbs(add)
    _add_tool_verbs(add)
    return parser


def _add_request_verbs(add) -> None:
    request = add("request", "request a role on a resource for a limited time")
    request.add_argument("resource", metavar="RESOURCE", help="resource name, e.g. postgres://prod/orders")
    request.add_argument("role", metavar="ROLE", help="role on the resource, e.g. read")
    request.add_argument("--duration", type=parse_duration, required=True, help=f"requested duration: {DURATION_FORMS}")
    request.add_argument("--reason", required=True, help="why the access is needed")
    request.add_argument("--principal", help="who gets the access (default: the caller; needs submit_for_others)")
    request.add_argument(
        "--device", choices=[posture.value for posture in DevicePosture], help="device posture of the requester"
    )
    request.add_argument("--ticket", help="ticket id that justifies the request")
    request.add_argument("--idempotency-key", help="key that makes a retried request return the first result")

    review = add("review", "approve or deny a pending request")
    review.add_argument("request_id", metavar="REQUEST_ID")
    review.add_argument("decision", choices=["approve", "deny"])
    review.add_argument("--reason", required=True, help="why you approve or deny")
    review.add_argument("--duration", type=parse_duration, help=f"approve for a shorter duration: {DURATION_FORMS}")

    cancel = add("cancel", "cancel a pending request")
    cancel.add_argument("request_id", metavar="REQUEST_ID")
    cancel.add_argument("--reason", help="why the request is cancelled")


def _add_grant_verbs(add) -> None:
    revoke = add("revoke", "end a grant before it expires")
    revoke.add_argument("grant_id", metavar="GRANT_ID")
    revoke.add_argument("--reason", required=True, help="why the grant is revoked")

    extend = add("extend", "extend a grant (decided again by the policy and risk engine)")
    extend.add_argument("grant_id", metavar="GRANT_ID")
    extend.add_argument("--duration", type=parse_duration, required=True, help=f"new remaining duration: {DURATION_FORMS}")
    extend.add_argument("--reason", required=True, help="why more time is needed")
    extend.add_argument(
        "--device", choices=[posture.value for posture in DevicePosture], help="device posture of the requester"
    )

    check = add("check", "check whether a principal holds a role on a resource now (exit 0 allowed, 1 not)")
    check.add_argument("principal", metavar="PRINCIPAL")
    check.add_argument("resource", metavar="RESOURCE")
    check.add_argument("role", metavar="ROLE")

    listing = add("ls", "list requests or grants")
    listing.add_argument("kind", choices=["requests", "grants"])
    listing.add_argument("--state", choices=[state.value for state in RequestState], help="requests in this state")
    listing.add_argument("--principal", help="only this principal")
    listing.add_argument("--reviewer", help="requests this reviewer may review")
    listing.add_argument("--active", action="store_true", help="only active grants")
    listing.add_argument("--limit", type=parse_positive_int, default=100, help="maximum number of rows (default: 100)")


def _add_tool_verbs(add) -> None:
    replay = add("replay", "replay an Amazon access log as access requests and print a summary")
    replay.description = (
        "Replay an Amazon access log as access requests and print a summary. Uses the `replay` profile"
        " of credentials.yaml unless --profile or JITGATE_API_KEY is set. Exit 1 when any request failed."
    )
    replay.add_argument("--file", help="access log CSV (default: the shared requests.csv, else a synthetic stream)")
    replay.add_argument("--rate", type=parse_rate, default=0.0, help="requests started per second; 0 is unlimited")
    replay.add_argument("--limit", type=parse_positive_int, help="replay at most this many rows (synthetic default: 5000)")
    replay.add_argument("--concurrency", type=parse_positive_int, default=32, help="requests in flight (default: 32)")
    replay.add_argument("--seed", type=int, default=7, help="seed of the generated context (default: 7)")
    replay.add_argument("--timeout", type=parse_timeout, default=10.0, help="timeout of one request in seconds (default: 10)")

    risk = add("risk", "train or evaluate the risk model")
    risk_verbs = risk.add_subparsers(dest="risk_verb", metavar="ACTION", required=True, parser_class=_ArgumentParser)
    train = risk_verbs.add_parser("train", help="train the model on a labelled access log")
    train.add_argument("--data", help="labelled CSV in the train.csv format (default: the shared train.csv)")
    train.add_argument("--out", help="model file to write (default: risk/model.npz under JITGATE_CONFIGS_DIR, else configs/)")
    train.add_argument("--seed", type=int, help="seed of the train/holdout split")
    train.add_argument("--holdout-out", help="also write the held-out rows to this CSV")
    evaluate = risk_verbs.add_parser("evaluate", help="print the ROC AUC of a model on a labelled access log")
    evaluate.add_argument("--data", required=True, help="labelled CSV in the train.csv format")
    evaluate.add_argument("--model", help="model file (default: risk/model.npz under JITGATE_CONFIGS_DIR, else configs/)")

    policy = add("policy", "validate or test a Cedar policy bundle")
    policy_verbs = policy.add_subparsers(
        dest="policy_verb", metavar="ACTION", required=True, parser_class=_ArgumentParser
    )
    for name, help_text in (
        ("validate", "validate the policies against the schema"),
        ("test", "run the bundle's test cases"),
    ):
        action = policy_verbs.add_parser(name, help=help_text)
        action.add_argument("--bundle", help="policy bundle directory (default: policies/ under JITGATE_CONFIGS_DIR, else configs/)")
