"""jitgate: client SDK of the just-in-time access approval cluster.

    import jitgate

    with jitgate.Client.from_environment() as client:
        result = client.request_access("postgres://prod/orders", "read", 3600, "debug incident")

The base install is this SDK and the `jitgate` CLI; `pip install 'jitgate[server]'` adds the cluster.
"""

from jitgate._client import VERSION as __version__
from jitgate._client import AsyncClient, Client
from jitgate.errors import (
    Conflict,
    Forbidden,
    IdempotencyMismatch,
    InvalidInput,
    JitError,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
)
from jitgate.models import (
    AccessRequest,
    AccessRequestCreate,
    AuditEvent,
    CheckBatchResult,
    CheckResult,
    Credentials,
    Decision,
    DecisionInput,
    DevicePosture,
    Effect,
    Factor,
    Grant,
    GrantState,
    Page,
    RequestContext,
    RequestResult,
    RequestState,
    Review,
)

__all__ = [
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
