"""Identities and catalogs: principals with aliases, API keys (stored hashed) and resources.

Every identifier a caller uses (username, email, letter-case variant) maps to one canonical
principal, so self-review checks compare canonical ids only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jitgate.errors import InvalidInput

SCOPES = frozenset({"request", "submit_for_others", "review", "admin", "source"})


@dataclass(frozen=True)
class Principal:
    id: str
    aliases: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)


class PrincipalDirectory:
    def __init__(self, principals: list[Principal]) -> None:
        self._by_id = {p.id.casefold(): p for p in principals}
        self._alias_to_id: dict[str, str] = {}
        for principal in principals:
            for name in (principal.id, *principal.aliases):
                self._alias_to_id[name.strip().casefold()] = principal.id

    @classmethod
    def from_config(cls, data: dict[str, Any] | None) -> PrincipalDirectory:
        entries = (data or {}).get("principals", [])
        return cls(
            [
                Principal(id=str(e["id"]), aliases=tuple(str(a) for a in e.get("aliases", ())), attributes=dict(e.get("attributes", {})))
                for e in entries
            ]
        )

    def canonical(self, name: str) -> str:
        """Map any alias or letter-case variant to the canonical principal id."""
        folded = name.strip().casefold()
        return self._alias_to_id.get(folded, folded)

    def canonical_many(self, names: Iterable[str]) -> list[str]:
        """Return `canonical` of each name, with the per-name work in C (`map` over str and dict methods)."""
        folded = list(map(str.casefold, map(str.strip, names)))
        return list(map(self._alias_to_id.get, folded, folded))

    def attributes(self, canonical_id: str) -> dict[str, Any]:
        principal = self._by_id.get(canonical_id.casefold())
        return dict(principal.attributes) if principal else {}

    def is_known(self, canonical_id: str) -> bool:
        return canonical_id.casefold() in self._by_id


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    principal: str
    scopes: frozenset[str]
    sha256: str


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def generate_api_key() -> str:
    return "jg_" + secrets.token_urlsafe(32)


class ApiKeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_hash = {k.sha256: k for k in keys}

    @classmethod
    def from_config(cls, data: dict[str, Any] | None) -> ApiKeyRing:
        keys = []
        for entry in (data or {}).get("keys", []):
            scopes = frozenset(entry.get("scopes", ()))
            unknown = scopes - SCOPES
            if unknown:
                raise InvalidInput(
                    f"API key {entry.get('id')!r} has unknown scopes {sorted(unknown)}; known: {sorted(SCOPES)}",
                    field="scopes",
                    value=sorted(unknown),
                )
            keys.append(ApiKey(key_id=str(entry["id"]), principal=str(entry["principal"]), scopes=scopes, sha256=str(entry["sha256"])))
        return cls(keys)

    def lookup(self, raw_key: str) -> ApiKey | None:
        return self._by_hash.get(hash_api_key(raw_key))


@dataclass(frozen=True)
class ResourceEntry:
    pattern: str
    owner_team: str = "unknown"
    sensitivity: str = "unknown"
    provisioner: str = "record"
    usual_duration_s: int = 3600
    target: dict[str, Any] = field(default_factory=dict)

    def attributes(self) -> dict[str, Any]:
        return {"owner_team": self.owner_team, "sensitivity": self.sensitivity, "provisioner": self.provisioner}


class ResourceCatalog:
    """Resources by glob pattern; the first matching entry wins, else the default entry."""

    def __init__(self, entries: list[ResourceEntry], default: ResourceEntry) -> None:
        self._entries = entries
        self._default = default
        self._cache: dict[str, ResourceEntry] = {}
        # One regex with a named group per entry finds the first matching entry in one match call,
        # where fnmatch needs one call per entry.
        self._groups = [f"e{i}" for i in range(len(entries))]
        self._matcher = re.compile("|".join(f"(?P<{name}>{fnmatch.translate(e.pattern)})" for name, e in zip(self._groups, entries)))

    @classmethod
    def from_config(cls, data: dict[str, Any] | None) -> ResourceCatalog:
        data = data or {}
        entries = [ResourceEntry(**e) for e in data.get("resources", [])]
        default = ResourceEntry(pattern="*", **data.get("default", {}))
        return cls(entries, default)

    def lookup(self, resource: str) -> ResourceEntry:
        found = self._cache.get(resource)
        if found is None:
            found = self._default
            match = self._matcher.match(resource) if self._entries else None
            if match is not None:
                groups = match.groupdict()
                found = next(e for name, e in zip(self._groups, self._entries) if groups[name] is not None)
            if len(self._cache) < 100_000:
                self._cache[resource] = found
        return found
