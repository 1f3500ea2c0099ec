"""Wire models of the v1 API: request bodies (strict, `extra="forbid"`) and responses.

Instants on the wire are ISO 8601 UTC strings; durations are whole seconds (`*_s`).
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

MAX_ITEMS_PER_BATCH = 100_000
MAX_DECISIONS_PER_BATCH = 10_000

# Control characters, and the invisible or bidirectional format characters that make a name
# display as another one (zero-width spaces, direction overrides, byte order mark).
_INVISIBLE = "\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=f"^[^{_INVISIBLE}]+$")]
ResourceName = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=f"^[^{_INVISIBLE}\\s]+$")]
RoleName = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")]
# Free text may contain tabs and line breaks, but no other control characters (terminal escapes).
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$")]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
AttributeValue = Annotated[str, StringConstraints(max_length=256, pattern=f"^[^{_INVISIBLE}]*$")]


class RequestState(str, Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class GrantState(str, Enum):
    ACTIVE = "active"
    REVOKING = "revoking"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Effect(str, Enum):
    ALLOW = "allow"
    DENY = "deny"
    REVIEW = "review"


class DevicePosture(str, Enum):
    MANAGED = "managed"
    UNMANAGED = "unmanaged"
    UNKNOWN = "unknown"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RequestContext(_Strict):
    """Context the submitter reports about the request's origin: source, ticket, device, address, hour."""

    source: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")] = "api"
    ticket: Annotated[str, StringConstraints(max_length=128)] | None = None
    device_posture: DevicePosture = DevicePosture.UNKNOWN
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    hour_utc: Annotated[StrictInt, Field(ge=0, le=23)] | None = Field(
        default=None, description="Hour of day at the source (UTC); defaults to the server's clock."
    )


class AccessRequestCreate(_Strict):
    """Body of `POST /v1/requests`."""

    principal: Identifier | None = Field(default=None, description="Who gets the access; defaults to the caller.")
    principal_attributes: dict[AttributeName, AttributeValue] | None = Field(
        default=None,
        max_length=32,
        description="Attributes of a principal unknown to the directory; needs the submit_for_others scope.",
    )
    resource: ResourceName
    role: RoleName
    duration_s: StrictInt = Field(gt=0, description="Requested duration; at most the global maximum.")
    reason: Reason
    context: RequestContext = Field(default_factory=RequestContext)


class ReviewCreate(_Strict):
    """Body of `POST /v1/requests/{id}/reviews`."""

    decision: Literal["approve", "deny"]
    reason: Reason
    duration_s: StrictInt | None = Field(default=None, gt=0, description="Approve for a shorter duration.")


class CancelBody(_Strict):
    reason: Reason | None = None


class RevokeBody(_Strict):
    reason: Reason


class ExtendBody(_Strict):
    duration_s: StrictInt = Field(gt=0, description="New remaining duration from now.")
    reason: Reason
    context: RequestContext = Field(default_factory=RequestContext)


class CheckBody(_Strict):
    principal: Identifier
    resource: ResourceName
    role: RoleName


class CheckBatchBody(_Strict):
    """Columnar batch: element i of each list is one check."""

    principals: list[Identifier] = Field(max_length=MAX_ITEMS_PER_BATCH)
    resources: list[ResourceName] = Field(max_length=MAX_ITEMS_PER_BATCH)
    roles: list[RoleName] = Field(max_length=MAX_ITEMS_PER_BATCH)


class DecisionInput(_Strict):
    principal: Identifier
    principal_attributes: dict[AttributeName, AttributeValue] | None = Field(default=None, max_length=32)
    resource: ResourceName
    role: RoleName
    duration_s: StrictInt = Field(gt=0)
    context: RequestContext = Field(default_factory=RequestContext)


class DecisionBatchBody(_Strict):
    requests: list[DecisionInput] = Field(min_length=1, max_length=MAX_DECISIONS_PER_BATCH)


class Factor(BaseModel):
    name: str
    weight: float


class Decision(BaseModel):
    effect: Effect
    reasons: list[str]
    risk_score: float
    factors: list[Factor] = []
    policy_version: str
    model_version: str
    required_approvals: int = 0
    max_duration_s: int


class Review(BaseModel):
    reviewer: str
    decision: Literal["approve", "deny"]
    reason: str
    duration_s: int | None = None
    at: datetime
    key_id: str


class AccessRequest(BaseModel):
    id: str
    state: RequestState
    submitter: str
    principal: str
    resource: str
    role: str
    duration_s: int
    reason: str
    context: dict[str, Any]
    decision: Decision
    reviews: list[Review] = []
    grant_id: str | None = None
    created_at: datetime
    updated_at: datetime
    review_deadline: datetime | None = None
    version: int


class Grant(BaseModel):
    id: str
    request_id: str
    principal: str
    resource: str
    role: str
    state: GrantState
    granted_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    provisioner: str
    version: int


class RequestResult(BaseModel):
    """Response of `POST /v1/requests`: the request with its decision, and the grant when allowed."""

    request: AccessRequest
    grant: Grant | None = None


class CheckResult(BaseModel):
    allowed: bool
    grant_id: str | None = None
    expires_at: datetime | None = None


class CheckBatchResult(BaseModel):
    allowed: list[bool]
    expires_at_ms: list[int]


class Credentials(BaseModel):
    username: str
    password: str
    target: str


class AuditEvent(BaseModel):
    id: str
    shard: int
    at: datetime
    actor: str
    key_id: str
    kind: str
    subject: str
    from_state: str | None = None
    to_state: str | None = None
    message: str = ""
    data: dict[str, Any] = {}
    hash: str
    prev_hash: str


class Page(BaseModel):
    items: list[Any]
    next: str | None = None

