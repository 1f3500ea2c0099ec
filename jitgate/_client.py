"""`Client` and `AsyncClient` for the v1 HTTP API, on httpx.

Each API call is written once, as an operation: a generator that validates the arguments,
yields one or more `_Call`s (method, path, query, body) and receives each decoded JSON body
back, then returns the typed result. `Client` drives operations with blocking I/O and
`AsyncClient` with `await`, so building requests and parsing responses is shared.

    with jitgate.Client("http://127.0.0.1:8000", api_key) as client:
        result = client.request_access("postgres://prod/orders", "read", 3600, "debug incident")
        print(result.request.decision.effect, result.grant and result.grant.expires_at)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from enum import Enum
from importlib import metadata
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from jitgate._config import DEFAULT_API_URL, resolve_connection
from jitgate.errors import (
    ERRORS_BY_CODE,
    HTTP_STATUS,
    InvalidInput,
    JitError,
    Unavailable,
)
from jitgate.models import (
    AccessRequest,
    AccessRequestCreate,
    AuditEvent,
    CancelBody,
    CheckBatchBody,
    CheckBatchResult,
    CheckBody,
    CheckResult,
    Credentials,
    Decision,
    DecisionBatchBody,
    DecisionInput,
    ExtendBody,
    Grant,
    Page,
    RequestContext,
    RequestResult,
    RequestState,
    ReviewCreate,
    RevokeBody,
)

try:
    VERSION = metadata.version("jitgate")
except metadata.PackageNotFoundError:
    VERSION = "0+unknown"

DEFAULT_TIMEOUT_S = 10.0
# NOTE: the server's maximum page size is not part of the API contract; 100 is its documented default.
PAGE_SIZE = 100
# Maximum length of a rejected value's repr in an InvalidInput message, as the server cuts it.
MAX_SHOWN_VALUE_CHARS = 200

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)

# Problem-document keys that are not details of the error.
_PROBLEM_ENVELOPE_KEYS = frozenset({"type", "title", "status", "code", "detail", "message", "instance"})
_CLASS_BY_STATUS: dict[int, type[JitError]] = {status: cls for cls, status in HTTP_STATUS.items()}


@dataclass(frozen=True)
class _Call:
    """One HTTP exchange of an operation. With `probe`, the operation gets the status code instead of JSON."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: BaseModel | None = None
    headers: dict[str, str] = field(default_factory=dict)
    probe: bool = False


Operation = Generator[_Call, Any, T]


# --- argument validation and response parsing ------------------------------------------------


def _build_model(model: type[ModelT], **values: Any) -> ModelT:
    """Validate arguments with a wire model, raising `InvalidInput` that names the field."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _invalid_input_from(exc) from None


def _invalid_input_from(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field_name = ".".join(str(part) for part in first["loc"]) or "body"
    value = first.get("input")
    value_text = repr(value)
    if len(value_text) > MAX_SHOWN_VALUE_CHARS:
        # A rejected value can be megabytes long, and the CLI prints the message and the details.
        value_text = value_text[:MAX_SHOWN_VALUE_CHARS] + f"... ({len(value_text)} characters)"
        value = value_text
    details: dict[str, Any] = {"field": field_name, "value": value}
    limits = [v for k, v in (first.get("ctx") or {}).items() if k in ("ge", "le", "max_length", "min_length")]
    if len(limits) == 1:
        details["limit"] = limits[0]
    return InvalidInput(f"{field_name}: {first['msg']}, got {value_text}", **details)


def _parse(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise JitError(f"unexpected response from the server for {model.__name__}: {exc.errors()[0]['msg']}") from None


def _path_id(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"id must be a non-empty string, got {value!r}", field="id", value=value)
    return quote(value, safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInput(f"limit must be a positive integer or None, got {limit!r}", field="limit", value=limit, limit=1)


def _retry_after_s(headers: httpx.Headers) -> int | None:
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return int(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0, round((when - datetime.now(timezone.utc)).total_seconds()))


def _error_from_response(response: httpx.Response) -> JitError:
    """Map a non-2xx response to the `jitgate.errors` class of its problem `code`, else of its status."""
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem = body

    code = problem.get("code")
    error_class = ERRORS_BY_CODE.get(code) if isinstance(code, str) else None
    if error_class is None:
        error_class = _class_for_status(status)

    details = {key: value for key, value in problem.items() if key not in _PROBLEM_ENVELOPE_KEYS}
    detail = problem.get("detail")
    if isinstance(detail, str) and detail:
        message = detail
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # FastAPI's own validation response: {"detail": [{"loc": [...], "msg": ...}, ...]}
        location = ".".join(str(part) for part in detail[0].get("loc", []) if part != "body")
        message = f"{location}: {detail[0].get('msg', 'invalid')}" if location else str(detail[0].get("msg"))
        details.setdefault("field", location)
    else:
        snippet = response.text[:200].strip()
        message = f"HTTP {status} {response.reason_phrase}" + (f": {snippet}" if snippet else "")

    if issubclass(error_class, Unavailable):
        retry_after_s = details.pop("retry_after_s", None)
        if not isinstance(retry_after_s, int):
            retry_after_s = _retry_after_s(response.headers)
        error: JitError = error_class(message, retry_after_s=1 if retry_after_s is None else retry_after_s, **details)
    else:
        error = error_class(message, **details)
    error.status = status  # type: ignore[attr-defined]
    return error


def _class_for_status(status: int) -> type[JitError]:
    if status == 422:
        # Without a problem code, a 422 comes from FastAPI's request validation.
        return InvalidInput
    if status in (429, 502, 504):
        return Unavailable
    return _CLASS_BY_STATUS.get(status, JitError)


def _transport_error(request: httpx.Request, exc: httpx.TransportError, timeout_s: float) -> Unavailable:
    url = str(request.url)
    if isinstance(exc, httpx.TimeoutException):
        cause = f"timed out after {timeout_s} s ({type(exc).__name__})"
    else:
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    error = Unavailable(f"{request.method} {url} failed: {cause}", url=url, cause=type(exc).__name__)
    error.status = None  # type: ignore[attr-defined]
    return error


# --- operations ------------------------------------------------------------------------------


def _op_request_access(
    resource: str,
    role: str,
    duration_s: int,
    reason: str,
    principal: str | None,
    principal_attributes: Mapping[str, str] | None,
    context: RequestContext | Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Operation[RequestResult]:
    fields: dict[str, Any] = {"resource": resource, "role": role, "duration_s": duration_s, "reason": reason}
    if principal is not None:
        fields["principal"] = principal
    if principal_attributes is not None:
        fields["principal_attributes"] = dict(principal_attributes)
    if context is not None:
        fields["context"] = context
    body = _build_model(AccessRequestCreate, **fields)
    key = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
    data = yield _Call("POST", "/v1/requests", body=body, headers={"Idempotency-Key": key})
    return _parse(RequestResult, data)


def _op_get(path: str, model: type[ModelT]) -> Operation[ModelT]:
    data = yield _Call("GET", path)
    return _parse(model, data)


def _op_post(path: str, body: BaseModel, model: type[ModelT]) -> Operation[ModelT]:
    data = yield _Call("POST", path, body=body)
    return _parse(model, data)


def _op_extend(
    grant_id: str, duration_s: int, reason: str, context: RequestContext | dict[str, Any] | None
) -> Operation[Grant]:
    fields: dict[str, Any] = {"duration_s": duration_s, "reason": reason}
    if context is not None:
        fields["context"] = context
    body = _build_model(ExtendBody, **fields)
    return _op_post(f"/v1/grants/{_path_id(grant_id)}/extend", body, Grant)


def _op_list(
    path: str, filters: Mapping[str, Any], item_model: type[ModelT], limit: int | None
) -> Operation[list[ModelT]]:
    """Follow `next` cursors until `limit` items (all when None) or the last page."""
    _check_limit(limit)
    params = {name: _query_value(value) for name, value in filters.items() if value is not None}
    items: list[ModelT] = []
    after: str | None = None
    while limit is None or len(items) < limit:
        page_params = dict(params)
        page_params["limit"] = str(PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(items)))
        if after is not None:
            page_params["after"] = after
        page = _parse(Page, (yield _Call("GET", path, params=page_params)))
        items.extend(_parse(item_model, item) for item in page.items)
        if not page.next or page.next == after or not page.items:
            break
        after = page.next
    return items if limit is None else items[:limit]


def _op_check_batch(principals: list[str], resources: list[str], roles: list[str]) -> Operation[CheckBatchResult]:
    lengths = {"principals": len(principals), "resources": len(resources), "roles": len(roles)}
    if len(set(lengths.values())) != 1:
        raise InvalidInput(
            f"principals, resources and roles must have the same length, got {lengths}", field="roles", value=lengths
        )
    body = _build_model(CheckBatchBody, principals=principals, resources=resources, roles=roles)
    data = yield _Call("POST", "/v1/check:batch", body=body)
    return _parse(CheckBatchResult, data)


def _op_decide_batch(requests: Iterable[DecisionInput | Mapping[str, Any]]) -> Operation[list[Decision]]:
    items = [item.model_dump(exclude_unset=True) if isinstance(item, BaseModel) else dict(item) for item in requests]
    body = _build_model(DecisionBatchBody, requests=items)
    data = yield _Call("POST", "/v1/decisions:batch", body=body)
    if not isinstance(data, dict) or not isinstance(data.get("decisions"), list):
        raise JitError("unexpected response from the server for decisions:batch: no 'decisions' list")
    return [_parse(Decision, decision) for decision in data["decisions"]]


def _op_audit(shard: int | None, after: str | None, limit: int) -> Operation[Page]:
    _check_limit(limit)
    params = {"limit": str(limit)}
    if shard is not None:
        params["shard"] = str(shard)
    if after is not None:
        params["after"] = after
    page = _parse(Page, (yield _Call("GET", "/v1/audit", params=params)))
    return Page(items=[_parse(AuditEvent, item) for item in page.items], next=page.next)


def _op_probe(path: str) -> Operation[bool]:
    status = yield _Call("GET", path, probe=True)
    return 200 <= status < 300


# --- shared transport core -------------------------------------------------------------------


class _Core:
    """Request building and response decoding shared by both clients."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidInput(
                f"base_url must start with http:// or https://, got {base_url!r}", field="base_url", value=base_url
            )
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Accept": "application/json", "User-Agent": f"jitgate-python/{VERSION}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def http_options(self, max_connections: int) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": self.headers,
            "timeout": self.timeout_s,
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        }

    def build_request(self, http: httpx.Client | httpx.AsyncClient, call: _Call) -> httpx.Request:
        headers = dict(call.headers)
        content: bytes | None = None
        if call.body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(call.body.model_dump(mode="json", exclude_none=True)).encode()
        return http.build_request(call.method, call.path, params=call.params or None, headers=headers, content=content)

    def decode(self, call: _Call, response: httpx.Response) -> Any:
        if call.probe:
            return response.status_code
        if not 200 <= response.status_code < 300:
            raise _error_from_response(response)
        try:
            return response.json()
        except ValueError:
            raise JitError(
                f"{call.method} {response.request.url} returned HTTP {response.status_code} with a body that is not JSON"
            ) from None


class Client:
    """Blocking client of the jitgate v1 API.

    Raises the `jitgate.errors` class of a problem response (with `status` set) and
    `Unavailable` when the server cannot be reached. Pass `transport=httpx.MockTransport(...)`
    to test code that uses it without a server.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._core = _Core(base_url, api_key, timeout_s)
        self._http = httpx.Client(transport=transport, **self._core.http_options(max_connections))

    @classmethod
    def from_environment(
        cls,
        profile: str | None = None,
        *,
        api_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> Client:
        """Build a client from JITGATE_API_URL/JITGATE_API_KEY, else from a credentials.yaml profile."""
        connection = resolve_connection(profile, api_url=api_url)
        return cls(connection.api_url, connection.api_key, timeout_s=timeout_s, transport=transport)

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> Any:
        request = self._core.build_request(self._http, call)
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            raise _transport_error(request, exc, self._core.timeout_s) from exc
        return self._core.decode(call, response)

    def _run(self, operation: Operation[T]) -> T:
        call = next(operation)
        while True:
            result = self._send(call)
            try:
                call = operation.send(result)
            except StopIteration as stop:
                return stop.value

    def request_access(
        self,
        resource: str,
        role: str,
        duration_s: int,
        reason: str,
        *,
        principal: str | None = None,
        principal_attributes: Mapping[str, str] | None = None,
        context: RequestContext | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> RequestResult:
        """Submit an access request; a uuid4 idempotency key is generated when none is given."""
        return self._run(
            _op_request_access(
                resource, role, duration_s, reason, principal, principal_attributes, context, idempotency_key
            )
        )

    def get_request(self, request_id: str) -> AccessRequest:
        return self._run(_op_get(f"/v1/requests/{_path_id(request_id)}", AccessRequest))

    def list_requests(
        self,
        *,
        state: RequestState | str | None = None,
        principal: str | None = None,
        reviewer: str | None = None,
        limit: int | None = 100,
    ) -> list[AccessRequest]:
        """List requests, following page cursors until `limit` items (all when `limit` is None)."""
        filters = {"state": state, "principal": principal, "reviewer": reviewer}
        return self._run(_op_list("/v1/requests", filters, AccessRequest, limit))

    def review(
        self, request_id: str, decision: str, reason: str, *, duration_s: int | None = None
    ) -> RequestResult:
        body = _build_model(ReviewCreate, decision=decision, reason=reason, duration_s=duration_s)
        return self._run(_op_post(f"/v1/requests/{_path_id(request_id)}/reviews", body, RequestResult))

    def cancel(self, request_id: str, reason: str | None = None) -> AccessRequest:
        body = _build_model(CancelBody, reason=reason)
        return self._run(_op_post(f"/v1/requests/{_path_id(request_id)}/cancel", body, AccessRequest))

    def get_grant(self, grant_id: str) -> Grant:
        return self._run(_op_get(f"/v1/grants/{_path_id(grant_id)}", Grant))

    def list_grants(
        self, *, principal: str | None = None, active: bool | None = None, limit: int | None = 100
    ) -> list[Grant]:
        """List grants, following page cursors until `limit` items (all when `limit` is None)."""
        return self._run(_op_list("/v1/grants", {"principal": principal, "active": active}, Grant, limit))

    def revoke(self, grant_id: str, reason: str) -> Grant:
        body = _build_model(RevokeBody, reason=reason)
        return self._run(_op_post(f"/v1/grants/{_path_id(grant_id)}/revoke", body, Grant))

    def extend(
        self, grant_id: str, duration_s: int, reason: str, *, context: RequestContext | dict[str, Any] | None = None
    ) -> Grant:
        """Extend a grant to `duration_s` from now; decided again by risk and policy with `context`."""
        return self._run(_op_extend(grant_id, duration_s, reason, context))

    def credentials(self, grant_id: str) -> Credentials:
        return self._run(_op_get(f"/v1/grants/{_path_id(grant_id)}/credentials", Credentials))

    def check(self, principal: str, resource: str, role: str) -> CheckResult:
        body = _build_model(CheckBody, principal=principal, resource=resource, role=role)
        return self._run(_op_post("/v1/check", body, CheckResult))

    def check_batch(self, principals: list[str], resources: list[str], roles: list[str]) -> CheckBatchResult:
        return self._run(_op_check_batch(list(principals), list(resources), list(roles)))

    def decide_batch(self, requests: Iterable[DecisionInput | Mapping[str, Any]]) -> list[Decision]:
        """Evaluate requests without storing them; one `Decision` per input, in order."""
        return self._run(_op_decide_batch(requests))

    def audit(self, *, shard: int | None = None, after: str | None = None, limit: int = 100) -> Page:
        """Return one page of audit events (`items` are `AuditEvent`s; pass `next` as `after`)."""
        return self._run(_op_audit(shard, after, limit))

    def healthz(self) -> bool:
        """Return whether GET /healthz returns a 2xx status; raise `Unavailable` when the server cannot be reached."""
        return self._run(_op_probe("/healthz"))

    def ready(self) -> bool:
        """Return whether GET /readyz returns a 2xx status (503 while starting); raise `Unavailable` when unreachable."""
        return self._run(_op_probe("/readyz"))


class AsyncClient:
    """Asynchronous client with the same constructor and methods as `Client`, as coroutines."""

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._core = _Core(base_url, api_key, timeout_s)
        self._http = httpx.AsyncClient(transport=transport, **self._core.http_options(max_connections))

    @classmethod
    def from_environment(
        cls,
        profile: str | None = None,
        *,
        api_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> AsyncClient:
        """Build a client from JITGATE_API_URL/JITGATE_API_KEY, else from a credentials.yaml profile."""
        connection = resolve_connection(profile, api_url=api_url)
        return cls(
            connection.api_url,
            connection.api_key,
            timeout_s=timeout_s,
            transport=transport,
            max_connections=max_connections,
        )

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        request = self._core.build_request(self._http, call)
        try:
            response = await self._http.send(request)
        except httpx.TransportError as exc:
            raise _transport_error(request, exc, self._core.timeout_s) from exc
        return self._core.decode(call, response)

    async def _run(self, operation: Operation[T]) -> T:
        call = next(operation)
        while True:
            result = await self._send(call)
            try:
                call = operation.send(result)
            except StopIteration as stop:
                return stop.value

    async def request_access(
        self,
        resource: str,
        role: str,
        duration_s: int,
        reason: str,
        *,
        principal: str | None = None,
        principal_attributes: Mapping[str, str] | None = None,
        context: RequestContext | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> RequestResult:
        return await self._run(
            _op_request_access(
                resource, role, duration_s, reason, principal, principal_attributes, context, idempotency_key
            )
        )

    async def get_request(self, request_id: str) -> AccessRequest:
        return await self._run(_op_get(f"/v1/requests/{_path_id(request_id)}", AccessRequest))

    async def list_requests(
        self,
        *,
        state: RequestState | str | None = None,
        principal: str | None = None,
        reviewer: str | None = None,
        limit: int | None = 100,
    ) -> list[AccessRequest]:
        filters = {"state": state, "principal": principal, "reviewer": reviewer}
        return await self._run(_op_list("/v1/requests", filters, AccessRequest, limit))

    async def review(
        self, request_id: str, decision: str, reason: str, *, duration_s: int | None = None
    ) -> RequestResult:
        body = _build_model(ReviewCreate, decision=decision, reason=reason, duration_s=duration_s)
        return await self._run(_op_post(f"/v1/requests/{_path_id(request_id)}/reviews", body, RequestResult))

    async def cancel(self, request_id: str, reason: str | None = None) -> AccessRequest:
        body = _build_model(CancelBody, reason=reason)
        return await self._run(_op_post(f"/v1/requests/{_path_id(request_id)}/cancel", body, AccessRequest))

    async def get_grant(self, grant_id: str) -> Grant:
        return await self._run(_op_get(f"/v1/grants/{_path_id(grant_id)}", Grant))

    async def list_grants(
        self, *, principal: str | None = None, active: bool | None = None, limit: int | None = 100
    ) -> list[Grant]:
        return await self._run(_op_list("/v1/grants", {"principal": principal, "active": active}, Grant, limit))

    async def revoke(self, grant_id: str, reason: str) -> Grant:
        body = _build_model(RevokeBody, reason=reason)
        return await self._run(_op_post(f"/v1/grants/{_path_id(grant_id)}/revoke", body, Grant))

    async def extend(
        self, grant_id: str, duration_s: int, reason: str, *, context: RequestContext | dict[str, Any] | None = None
    ) -> Grant:
        """Extend a grant to `duration_s` from now; decided again by risk and policy with `context`."""
        return await self._run(_op_extend(grant_id, duration_s, reason, context))

    async def credentials(self, grant_id: str) -> Credentials:
        return await self._run(_op_get(f"/v1/grants/{_path_id(grant_id)}/credentials", Credentials))

    async def check(self, principal: str, resource: str, role: str) -> CheckResult:
        body = _build_model(CheckBody, principal=principal, resource=resource, role=role)
        return await self._run(_op_post("/v1/check", body, CheckResult))

    async def check_batch(self, principals: list[str], resources: list[str], roles: list[str]) -> CheckBatchResult:
        return await self._run(_op_check_batch(list(principals), list(resources), list(roles)))

    async def decide_batch(self, requests: Iterable[DecisionInput | Mapping[str, Any]]) -> list[Decision]:
        return await self._run(_op_decide_batch(requests))

    async def audit(self, *, shard: int | None = None, after: str | None = None, limit: int = 100) -> Page:
        return await self._run(_op_audit(shard, after, limit))

    async def healthz(self) -> bool:
        return await self._run(_op_probe("/healthz"))

    async def ready(self) -> bool:
        return await self._run(_op_probe("/readyz"))

