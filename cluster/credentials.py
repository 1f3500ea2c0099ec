"""Local API keys for a cluster started by `jitgate up`.

The server reads only hashes (`api-keys.yaml`); the raw keys go to `credentials.yaml`
(mode 0600) for the CLI and the replay tool on this machine. Existing files are kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from actors.domain.directory import generate_api_key, hash_api_key

LOCAL_PROFILES: dict[str, tuple[str, list[str]]] = {
    "admin": ("admin", ["admin", "request", "review", "submit_for_others"]),
    "replay": ("replay-bot", ["request", "submit_for_others"]),
    "alice": ("alice", ["request", "review"]),
    "bob": ("bob", ["request", "review"]),
    "carol": ("carol", ["request", "review"]),
    "dave": ("dave", ["request", "review"]),
}


def _write_private(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)


def ensure_event_secrets(secrets_file: Path, source_names: list[str]) -> None:
    """Create a webhook secret for each event source that has none yet."""
    secrets = yaml.safe_load(secrets_file.read_text()) if secrets_file.exists() else {}
    secrets = secrets or {}
    missing = [name for name in source_names if not secrets.get(name)]
    if missing or not secrets_file.exists():
        for name in missing:
            secrets[name] = generate_api_key().removeprefix("jg_")
        _write_private(secrets_file, secrets)


def ensure_local_keys(state_dir: Path, api_keys_file: Path, api_url: str) -> Path:
    """Create the local profiles' keys unless they exist; returns the credentials file."""
    credentials_file = state_dir / "credentials.yaml"
    if credentials_file.exists() and api_keys_file.exists():
        data = yaml.safe_load(credentials_file.read_text()) or {}
        if data.get("api_url") != api_url:
            data["api_url"] = api_url
            _write_private(credentials_file, data)
        return credentials_file
    profiles = {}
    keys = []
    for profile, (principal, scopes) in LOCAL_PROFILES.items():
        raw = generate_api_key()
        profiles[profile] = {"key": raw, "principal": principal}
        keys.append({"id": f"local-{profile}", "principal": principal, "scopes": scopes, "sha256": hash_api_key(raw)})
    _write_private(api_keys_file, {"keys": keys})
    _write_private(credentials_file, {"api_url": api_url, "profiles": profiles})
    return credentials_file
