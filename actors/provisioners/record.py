from __future__ import annotations


class RecordProvisioner:
    """For resources with no target system: the grant exists only in the ledger and its audit trail."""

    name = "record"

    async def apply(self, principal: str, resource: str, role: str) -> None:
        return None

    async def remove(self, principal: str, resource: str, role: str) -> None:
        return None

    def credentials(self, principal: str, resource: str, role: str) -> dict[str, str] | None:
        return None

    async def instance_id(self) -> str | None:
        return None
