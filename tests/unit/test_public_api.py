"""The public surface of the `jitgate` package: `__all__` is pinned so changes are deliberate."""

from __future__ import annotations

import inspect

import jitgate
from jitgate import errors, models

EXPECTED_ALL = [
    "AccessRequest",
    "AccessRequestCreate",
    "AsyncClient",
    "AuditEvent",
    "CheckBatchResult",
    "CheckResult",
    "Client",
    "Conflict",
    "Credentials",
    "Decision",
    "DecisionInput",
    "DevicePosture",
    "Effect",
    "Factor",
    "Forbidden",
    "Grant",
    "GrantState",
    "IdempotencyMismatch",
    "InvalidInput",
    "JitError",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "RequestContext",
    "RequestResult",
    "RequestState",
    "Review",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]

CLIENT_METHODS = [
    "request_access",
    "get_request",
    "list_requests",
    "review",
    "cancel",
    "get_grant",
    "list_grants",
    "revoke",
    "extend",
    "credentials",
    "check",
    "check_batch",
    "decide_batch",
    "audit",
    "healthz",
    "ready",
]


def test_all_is_pinned():
    assert sorted(jitgate.__all__) == sorted(EXPECTED_ALL)
    assert len(jitgate.__all__) == len(set(jitgate.__all__))


def test_every_public_name_resolves():
    for name in jitgate.__all__:
        assert hasattr(jitgate, name), name


def test_version_is_a_string():
    assert isinstance(jitgate.__version__, str)
    assert jitgate.__version__


def test_errors_are_the_shared_classes():
    for error_class in errors.HTTP_STATUS:
        assert getattr(jitgate, error_class.__name__) is error_class


def test_models_are_the_wire_models():
    for name in ("AccessRequest", "Grant", "RequestResult", "CheckResult", "Decision", "RequestContext"):
        assert getattr(jitgate, name) is getattr(models, name)


def test_clients_share_method_names_and_signatures():
    for name in CLIENT_METHODS:
        sync_method = getattr(jitgate.Client, name)
        async_method = getattr(jitgate.AsyncClient, name)
        assert not inspect.iscoroutinefunction(sync_method), name
        assert inspect.iscoroutinefunction(async_method), name
        assert inspect.signature(sync_method) == inspect.signature(async_method), name


def test_client_options_are_keyword_only():
    for client_class in (jitgate.Client, jitgate.AsyncClient):
        parameters = inspect.signature(client_class).parameters
        assert list(parameters)[:2] == ["base_url", "api_key"]
        for option in ("timeout_s", "transport"):
            assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY
