from __future__ import annotations

from typing import Protocol


class ProvisionerError(Exception):
    """The target system rejected an apply or remove, or timed out; the caller retries."""


class Provisioner(Protocol):
    name: str

    async def apply(self, principal: str, resource: str, role: str) -> None:
        """Give the access; calling it again for a live entitlement changes nothing."""

    async def remove(self, principal: str, resource: str, role: str) -> None:
        """Take the access away; calling it for an absent entitlement changes nothing."""

    def credentials(self, principal: str, resource: str, role: str) -> dict[str, str] | None:
        """Login details for the principal, or None when the target has no login of its own."""

    async def instance_id(self) -> str | None:
        """Identity of the running target, which changes when a restart may have lost the applied access.

        None when the target is unreachable, or when it keeps its access across restarts.
        """
