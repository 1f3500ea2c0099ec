"""The `jitgate` command line.

Verbs: up, down, status (local cluster); request, review, cancel, revoke, extend, check, ls
(HTTP API); replay (access log replay); risk train|evaluate; policy validate|test.
Global options, before or after the verb: --profile NAME, --api-url URL, --json.

Exit codes: 0 success; 1 failure (server error, unreachable server, failed replay requests,
`check` not allowed, `status` with a part not running); 2 invalid usage or input. Errors are
one line on stderr, `error: <message>`, followed by the field, value and limit when known.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from jitgate.cli import _commands, _server_commands
from jitgate.cli._parser import UsageError, build_parser, parse_duration
from jitgate.errors import IdempotencyMismatch, InvalidInput, JitError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Details worth showing after the message; others (url, cause, retry_after_s) stay in --json/SDK use.
_SHOWN_DETAILS = ("field", "value", "limit", "grant_id", "request_id")

_HANDLERS: dict[str, Callable] = {
    "up": _server_commands.up,
    "down": _server_commands.down,
    "status": _server_commands.status,
    "risk": _server_commands.risk,
    "policy": _server_commands.policy,
    "request": _commands.request,
    "review": _commands.review,
    "cancel": _commands.cancel,
    "revoke": _commands.revoke,
    "extend": _commands.extend,
    "check": _commands.check,
    "ls": _commands.list_objects,
    "replay": _commands.replay,
}

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main", "parse_duration"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return _HANDLERS[args.verb](args)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (InvalidInput, IdempotencyMismatch) as exc:
        return _fail(format_error(exc), EXIT_USAGE)
    except JitError as exc:
        return _fail(format_error(exc), EXIT_FAILURE)
    except SystemExit as exc:
        # argparse exits 0 after --help; keep that code rather than raising through the caller.
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader of stdout went away (`jitgate ls requests | head`); nothing left to report.
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the CLI promises one error line, never a traceback
        return _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_FAILURE)


def format_error(error: JitError) -> str:
    """Return the message followed by the details that it does not already contain."""
    shown = [
        f"{key}={error.details[key]!r}"
        for key in _SHOWN_DETAILS
        if key in error.details and str(error.details[key]) not in error.message
    ]
    return error.message + (f" ({', '.join(shown)})" if shown else "")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code

