"""The `AccessService` of this Serve replica process.

Serve pickles the ingress class by value, and cloudpickle would copy a module-level dict along
with it. The replica's state is therefore reached only through these functions: they are
pickled by reference, so they share one dict per process.
"""

from __future__ import annotations

from typing import Any

_state: dict[str, Any] = {"id": "unknown"}


def set_replica(service: Any, replica_id: str) -> None:
    _state["service"] = service
    _state["id"] = replica_id


def current_service() -> Any:
    return _state["service"]


def current_replica_id() -> str:
    return _state["id"]
