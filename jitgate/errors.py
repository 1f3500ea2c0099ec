"""Errors of jitgate, shared by the server and the SDK.

The tree has no HTTP in it; `HTTP_STATUS` maps each class to a status in one place,
and the SDK maps a problem response back to the same class.

    JitError
     +-- InvalidInput            400  a field is missing, malformed or out of range
     |    +-- PayloadTooLarge    413  the request body is over the server's size limit
     +-- Unauthenticated         401  no API key, or an unknown one
     +-- Forbidden               403  the caller may not do this (scope, self-review, policy)
     +-- NotFound                404  no such request, grant or resource
     +-- Conflict                409  the state does not allow it (already resolved, active grant, version)
     +-- IdempotencyMismatch     422  an Idempotency-Key reused with a different body
     +-- Unavailable             503  a dependency (Redis, an actor) is down; retry after `retry_after_s`
"""

from __future__ import annotations

from typing import Any


class JitError(Exception):
    """Base class: `message` for people, `code` for programs, `details` with the offending values."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the details when the error crosses a process boundary (Ray pickles it).
        return (_rebuild, (type(self), self.message, self.details))

    def to_problem(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.message, **self.details}


def _rebuild(cls: type[JitError], message: str, details: dict[str, Any]) -> JitError:
    error = cls.__new__(cls)
    JitError.__init__(error, message, **details)
    if "retry_after_s" in details:
        error.retry_after_s = details["retry_after_s"]
    return error


class InvalidInput(JitError):
    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class Unauthenticated(JitError):
    code = "unauthenticated"


class Forbidden(JitError):
    code = "forbidden"


class NotFound(JitError):
    code = "not_found"


class Conflict(JitError):
    code = "conflict"


class IdempotencyMismatch(JitError):
    code = "idempotency_mismatch"


class Unavailable(JitError):
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1, **details: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)
        self.retry_after_s = retry_after_s


HTTP_STATUS: dict[type[JitError], int] = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    IdempotencyMismatch: 422,
    Unavailable: 503,
}

ERRORS_BY_CODE: dict[str, type[JitError]] = {cls.code: cls for cls in HTTP_STATUS}


def http_status(error: JitError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
