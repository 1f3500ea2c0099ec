"""Redis ACL provisioner: one ACL user per entitlement on a target Redis.

A resource `redis://<name>/<prefix>` covers the keys `<prefix>:*`. The role maps to command
categories: read -> `+@read`, write -> `+@read +@write`, admin -> `+@all`. The password is an
HMAC of the user name under a secret, so `apply` is idempotent and nothing secret is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors.provisioners.base import ProvisionerError

ROLE_RULES = {"read": ["+@read", "+ping", "+auth"], "write": ["+@read", "+@write", "+ping", "+auth"], "admin": ["+@all"]}
# A prefix becomes part of an ACL key pattern, where `*`, `?`, `[`, `]` and `\` are glob syntax,
# so only plain names are accepted: otherwise `redis://target/*` would grant every key.
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.:-]{0,127}$")
_READABLE = re.compile(r"[^A-Za-z0-9_-]")


def key_prefix(resource: str) -> str:
    """Return the key prefix of `redis://<name>/<prefix>`; raises ValueError for a missing or glob prefix."""
    _, _, rest = resource.partition("://")
    _, _, prefix = rest.partition("/")
    if not PREFIX_PATTERN.match(prefix):
        raise ValueError(
            f"resource {resource!r} needs a key prefix of letters, digits, '_', '-', '.' or ':' "
            "(at most 128 characters, no glob characters) after redis://<name>/"
        )
    return prefix


def acl_username(principal: str, resource: str, role: str) -> str:
    """Return the ACL user of an entitlement: readable parts plus a digest, so that no two collide."""
    prefix = key_prefix(resource)
    digest = hashlib.sha256("\x1f".join((principal, prefix, role)).encode()).hexdigest()[:16]
    readable = "-".join(_READABLE.sub("_", part)[:24] for part in (principal, prefix, role))
    return f"jit.{readable}.{digest}"


class RedisAclProvisioner:
    name = "redis-acl"

    def __init__(self, url: str, secret: bytes, *, timeout_s: float = 2.0) -> None:
        self.url = url
        self._secret = secret
        self._client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def password(self, username: str) -> str:
        return hmac.new(self._secret, username.encode(), hashlib.sha256).hexdigest()

    async def apply(self, principal: str, resource: str, role: str) -> None:
        if role not in ROLE_RULES:
            raise ProvisionerError(f"role {role!r} has no Redis ACL rules; known roles: {sorted(ROLE_RULES)}")
        try:
            username = acl_username(principal, resource, role)
        except ValueError as error:
            raise ProvisionerError(str(error)) from error
        pattern = f"~{key_prefix(resource)}:*"
        rules = ["reset", "on", f">{self.password(username)}", pattern, *ROLE_RULES[role]]
        try:
            await self._client.execute_command("ACL", "SETUSER", username, *rules)
        except (RedisError, OSError) as error:
            raise ProvisionerError(f"ACL SETUSER {username} on {self.url} failed: {error}") from error

    async def remove(self, principal: str, resource: str, role: str) -> None:
        try:
            username = acl_username(principal, resource, role)
        except ValueError:
            return  # No user was ever created for a resource without a valid prefix.
        try:
            # ACL DELUSER also disconnects the clients authenticated as that user.
            await self._client.execute_command("ACL", "DELUSER", username)
        except (RedisError, OSError) as error:
            raise ProvisionerError(f"ACL DELUSER {username} on {self.url} failed: {error}") from error

    async def instance_id(self) -> str | None:
        """Return the target's `run_id`, which changes on restart, or None when the target is unreachable.

        ACL SETUSER changes live in memory only, unless the target saves them to an ACL file.
        A restarted target therefore has none of the users applied before.
        """
        try:
            info = await self._client.info("server")
        except (RedisError, OSError):
            return None
        return info.get("run_id")

    def credentials(self, principal: str, resource: str, role: str) -> dict[str, str] | None:
        try:
            username = acl_username(principal, resource, role)
        except ValueError:
            return None
        return {"username": username, "password": self.password(username), "target": self.url}
