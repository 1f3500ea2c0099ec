"""Settings of a jitgate cluster, read once from `JITGATE_*` environment variables.

No other module reads the environment: the CLI, the Serve app and the tests build
one `Settings` and pass it (or the parts they need) down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

IngressMode = Literal["proxy", "direct", "haproxy"]

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# `ray start` hands these ports to worker processes (its --min/max-worker-port defaults). A local
# head with its dashboard port inside them refuses to start, and an HTTP port there can clash with a worker.
RAY_WORKER_PORTS = range(10002, 20000)


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "jitgate"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JITGATE_", extra="forbid")

    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Directory for the Ray temp dir, the embedded Redis data, logs and pid files.",
    )
    redis_url: str | None = Field(
        default=None,
        description="URL of an existing Redis; unset starts the embedded Redis server under state_dir.",
    )
    redis_fsync: Literal["everysec", "always"] = Field(
        default="everysec",
        description="AOF fsync policy of the embedded Redis: 'always' fsyncs each write before the ack.",
    )
    ray_address: str | None = Field(
        default=None, description="Address of an existing Ray cluster; unset starts a local Ray head."
    )
    namespace: str = Field(default="jitgate", description="Ray namespace of the named actors.")
    http_host: str = Field(default="127.0.0.1", description="Interface the HTTP API listens on.")
    http_port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP API.")
    dashboard: bool = Field(default=True, description="Start the Ray dashboard with the local head.")
    dashboard_port: int = Field(default=8265, ge=1, le=65535, description="Port of the Ray dashboard.")
    num_cpus: int = Field(default=2, ge=1, description="CPUs the local Ray head offers to actors.")
    object_store_memory_bytes: int = Field(
        default=512 * 1024 * 1024, ge=78_643_200, description="Object store size of the local Ray head."
    )
    worker_niceness: int = Field(
        default=0,
        ge=0,
        le=19,
        description=(
            "Nice value of the Ray worker processes that run jitgate's actors and replicas. Ray's own "
            "default is 15, under which any busy process at nice 0 on the host delays expiry timers."
        ),
    )
    ingress_replicas: int = Field(default=2, ge=1, description="Serve ingress replicas.")
    ingress: IngressMode = Field(
        default="proxy",
        description=(
            "How HTTP reaches the ingress replicas. 'proxy': the Serve HTTP proxy on http_port. "
            "'haproxy': HAProxy on http_host:http_port balances each request over the replicas' own "
            "HTTP servers (Ray Serve direct ingress, ports 30000-31000 on http_host), at about a fifth "
            "of the Serve proxy's CPU per request; `up` binds its stats and Prometheus ports to "
            "127.0.0.1 as well. When a replica dies, HAProxy can fail a few requests that reach it in "
            "the next tens of milliseconds, not only those in flight. "
            "'direct': each replica serves on its own port from 30000-31000, and http_port keeps the "
            "Serve proxy, so clients must pick a replica port."
        ),
    )
    decisions_in_ingress: bool = Field(
        default=False,
        description=(
            "Score risk and evaluate policies inside each ingress replica, with the same RiskScorer and "
            "PolicyActor classes, instead of calling their actors. It saves two actor calls per batch of "
            "decisions, but each replica counts the recent requests of a principal for the risk score "
            "from its own traffic only."
        ),
    )
    actor_channels: bool = Field(
        default=True,
        description=(
            "Send the hot actor calls (risk scoring, policy decisions, submissions and checks) over a "
            "Unix socket to actors on the caller's node, at about a tenth of a Ray actor call's latency. "
            "Ray still creates and restarts the actors, and carries every other call."
        ),
    )
    ledger_shards: int = Field(default=2, ge=1, le=256, description="GrantLedger shards (by principal).")
    policy_shards: int = Field(default=2, ge=1, le=256, description="PolicyActor shards (by resource).")
    risk_scorers: int = Field(default=1, ge=1, le=64, description="RiskScorer actors.")
    configs_dir: Path = Field(default=REPO_CONFIGS, description="Directory with policies, risk model and catalogs.")
    api_keys_file: Path | None = Field(
        default=None, description="YAML file of hashed API keys; unset uses state_dir/api-keys.yaml."
    )
    target_redis_url: str | None = Field(
        default=None,
        description="Target Redis of the redis-acl provisioner; unset starts a second embedded Redis.",
    )
    max_duration_s: int = Field(
        default=12 * 3600, ge=1, description="Global maximum grant duration, above any policy maximum."
    )
    review_window_s: int = Field(
        default=24 * 3600, ge=1, description="How long a pending request waits for reviews before it expires."
    )
    check_cache_ttl_ms: int = Field(
        default=1000, ge=0, le=60_000, description="Lifetime of a cached check result, capped by the grant expiry."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest accepted request body.")
    max_batch_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024,
        description="Largest accepted body of `check:batch` and `decisions:batch`, whose item limits need more than `max_body_bytes`.",
    )

    @field_validator("http_port", "dashboard_port")
    @classmethod
    def _outside_ray_worker_ports(cls, port: int, info: ValidationInfo) -> int:
        unused = info.field_name == "dashboard_port" and not info.data.get("dashboard", True)
        if info.data.get("ray_address") is None and not unused and port in RAY_WORKER_PORTS:
            raise ValueError(
                f"port {port} is inside the local Ray head's worker port range "
                f"{RAY_WORKER_PORTS.start}-{RAY_WORKER_PORTS.stop - 1}; choose a port outside it"
            )
        return port

    @property
    def resolved_api_keys_file(self) -> Path:
        return self.api_keys_file or self.state_dir / "api-keys.yaml"

    @property
    def event_secrets_file(self) -> Path:
        return self.state_dir / "event-secrets.yaml"

    @property
    def policy_dir(self) -> Path:
        return self.configs_dir / "policies"

    @property
    def risk_model_path(self) -> Path:
        return self.configs_dir / "risk" / "model.npz"
