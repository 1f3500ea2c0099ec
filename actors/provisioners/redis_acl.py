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
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def key_prefix(resource: str) -> str:
    _, _, rest = resource.partition("://")
    _, _, prefix = rest.partition("/")
    return prefix or "*"


def acl_username(principal: str, resource: str, role: str) -> str:
    return "jit." + ".".join(_UNSAFE.sub("_", part) for part in (principal, key_prefix(resource), role))


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
        username = acl_username(principal, resource, role)
        prefix = key_prefix(resource)
        pattern = "~*" if prefix == "*" else f"~{prefix}:*"
        rules = ["reset", "on", f">{self.password(username)}", pattern, *ROLE_RULES[role]]
        try:
            await self._client.execute_command("ACL", "SETUSER", username, *rules)
        except (RedisError, OSError) as error:
            raise ProvisionerError(f"ACL SETUSER {username} on {self.url} failed: {error}") from error

    async def remove(self, principal: str, resource: str, role: str) -> None:
        username = acl_username(principal, resource, role)
        try:
            # ACL DELUSER also disconnects the clients authenticated as that user.
            await self._client.execute_command("ACL", "DELUSER", username)
        except (RedisError, OSError) as error:
            raise ProvisionerError(f"ACL DELUSER {username} on {self.url} failed: {error}") from error

    def credentials(self, principal: str, resource: str, role: str) -> dict[str, str] | None:
        username = acl_username(principal, resource, role)
        return {"username": username, "password": self.password(username), "target": self.url}
