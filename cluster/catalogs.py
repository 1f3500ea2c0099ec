"""Load the YAML catalogs (principals, resources, API keys) into the pure domain objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from actors.domain.directory import ApiKeyRing, PrincipalDirectory, ResourceCatalog
from cluster.settings import Settings


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open() as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must contain a mapping at the top level, found {type(data).__name__}")
    return data


def load_event_sources(settings: Settings):
    from cluster.events import load_sources

    return load_sources(read_yaml(settings.configs_dir / "event-sources.yaml"), read_yaml(settings.event_secrets_file))


def load_catalogs(settings: Settings) -> tuple[PrincipalDirectory, ResourceCatalog, ApiKeyRing]:
    directory = PrincipalDirectory.from_config(read_yaml(settings.configs_dir / "principals.yaml"))
    catalog = ResourceCatalog.from_config(read_yaml(settings.configs_dir / "resources.yaml"))
    keyring = ApiKeyRing.from_config(read_yaml(settings.resolved_api_keys_file))
    return directory, catalog, keyring
