"""Verbs that talk to the HTTP API through the SDK: request, review, cancel, revoke, extend, check, ls, replay."""

from __future__ import annotations

import argparse
from pathlib import Path

from jitgate import replay as replay_module
from jitgate._client import Client
from jitgate._config import resolve_connection
from jitgate.cli import _output as output
from jitgate.cli._parser import UsageError
from jitgate.models import RequestContext

EXIT_OK = 0
EXIT_FAILURE = 1
REPLAY_PROFILE = "replay"


def _client(args: argparse.Namespace) -> Client:
    return Client.from_environment(getattr(args, "profile", None), api_url=getattr(args, "api_url", None))


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def request(args: argparse.Namespace) -> int:
    context_fields = {"source": "cli", "ticket": args.ticket}
    if args.device is not None:
        context_fields["device_posture"] = args.device
    context = RequestContext(**context_fields)
    with _client(args) as client:
        result = client.request_access(
            args.resource,
            args.role,
            args.duration,
            args.reason,
            principal=args.principal,
            context=context,
            idempotency_key=args.idempotency_key,
        )
    if _json(args):
        output.print_json(result)
    else:
        print(output.describe_request_result(result))
    return EXIT_OK


def review(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.review(args.request_id, args.decision, args.reason, duration_s=args.duration)
    if _json(args):
        output.print_json(result)
    else:
        print(output.describe_request_result(result))
    return EXIT_OK


def cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        access_request = client.cancel(args.request_id, args.reason)
    if _json(args):
        output.print_json(access_request)
    else:
        print(output.describe_request(access_request))
    return EXIT_OK


def revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        grant = client.revoke(args.grant_id, args.reason)
    _print_grant(args, grant)
    return EXIT_OK


def extend(args: argparse.Namespace) -> int:
    with _client(args) as client:
        context = RequestContext(source="cli", device_posture=args.device) if args.device else None
        grant = client.extend(args.grant_id, args.duration, args.reason, context=context)
    _print_grant(args, grant)
    return EXIT_OK


def _print_grant(args: argparse.Namespace, grant) -> None:
    if _json(args):
        output.print_json(grant)
    else:
        print(output.describe_grant(grant))


def check(args: argparse.Namespace) -> int:
    """Exit 0 when the principal has the role now, 1 when not."""
    with _client(args) as client:
        result = client.check(args.principal, args.resource, args.role)
    if _json(args):
        output.print_json(result)
    elif result.allowed:
        print(f"allowed: grant {result.grant_id or '-'} until {output.format_time(result.expires_at)}")
    else:
        print("not allowed")
    return EXIT_OK if result.allowed else EXIT_FAILURE


def list_objects(args: argparse.Namespace) -> int:
    if args.kind == "requests":
        if args.active:
            raise UsageError("--active applies to `ls grants` only")
        with _client(args) as client:
            items = client.list_requests(
                state=args.state, principal=args.principal, reviewer=args.reviewer, limit=args.limit
            )
        table = output.requests_table
    else:
        if args.state is not None or args.reviewer is not None:
            raise UsageError("--state and --reviewer apply to `ls requests` only")
        with _client(args) as client:
            items = client.list_grants(principal=args.principal, active=True if args.active else None, limit=args.limit)
        table = output.grants_table

    if _json(args):
        output.print_json(items)
    elif not items:
        print(f"no {args.kind}")
    else:
        print(table(items))
    return EXIT_OK


def replay(args: argparse.Namespace) -> int:
    profile = getattr(args, "profile", None) or REPLAY_PROFILE
    connection = resolve_connection(profile, api_url=getattr(args, "api_url", None))
    return replay_module.run(
        connection,
        file=Path(args.file) if args.file else None,
        limit=args.limit,
        seed=args.seed,
        concurrency=args.concurrency,
        rate_per_s=args.rate,
        timeout_s=args.timeout,
        json_output=_json(args),
    )
