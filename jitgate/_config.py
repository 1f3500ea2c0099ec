"""Client-side configuration: the one place the SDK and the CLI read the environment.

Variables:
    JITGATE_API_URL    base URL of the HTTP API (default http://127.0.0.1:8000)
    JITGATE_API_KEY    API key sent as `Authorization: Bearer <key>`
    JITGATE_PROFILE    profile of credentials.yaml used when no key is set (default `admin`)
    JITGATE_STATE_DIR  directory holding credentials.yaml (default ~/.local/state/jitgate)

`jitgate up` writes `<state_dir>/credentials.yaml`:

    api_url: http://127.0.0.1:8000
    profiles:
      admin:  {key: "jg_...", principal: admin}
      replay: {key: "jg_...", principal: replay-bot}

PyYAML is part of the `server` extra only, so without it a small parser reads this flat
format (scalars, nested block mappings and one-line flow mappings of scalars).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitgate.errors import InvalidInput, Unauthenticated

ENV_API_URL = "JITGATE_API_URL"
ENV_API_KEY = "JITGATE_API_KEY"
ENV_PROFILE = "JITGATE_PROFILE"
ENV_STATE_DIR = "JITGATE_STATE_DIR"

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_PROFILE = "admin"
CREDENTIALS_FILE_NAME = "credentials.yaml"


@dataclass(frozen=True)
class Profile:
    """One named API key of credentials.yaml and the principal it acts as."""

    name: str
    key: str
    principal: str | None = None


@dataclass(frozen=True)
class CredentialsFile:
    api_url: str | None
    profiles: dict[str, Profile]


@dataclass(frozen=True)
class Connection:
    """API URL and key to use, with `source` naming where the key came from."""

    api_url: str
    api_key: str | None
    profile: str | None
    source: str


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    configured = env.get(ENV_STATE_DIR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "state" / "jitgate"


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    return state_dir(environ) / CREDENTIALS_FILE_NAME


def load_credentials(path: Path) -> CredentialsFile:
    """Read credentials.yaml; raise `InvalidInput` naming the file (and line) when it is malformed.

    Raises `FileNotFoundError` when the file does not exist, so callers can say how to create it.
    """
    text = path.read_text(encoding="utf-8")
    document = _parse_yaml(text, path)
    if not isinstance(document, dict):
        raise InvalidInput(f"{path}: expected a mapping with api_url and profiles", field=str(path))

    api_url = document.get("api_url")
    if api_url is not None and not isinstance(api_url, str):
        raise InvalidInput(f"{path}: api_url must be a string, got {api_url!r}", field="api_url", value=api_url)

    raw_profiles = document.get("profiles") or {}
    if not isinstance(raw_profiles, dict):
        raise InvalidInput(f"{path}: profiles must be a mapping of name to {{key, principal}}", field="profiles")

    profiles: dict[str, Profile] = {}
    for name, entry in raw_profiles.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not entry["key"]:
            raise InvalidInput(f"{path}: profile {name!r} needs a non-empty key", field=f"profiles.{name}.key")
        principal = entry.get("principal")
        profiles[str(name)] = Profile(
            name=str(name), key=entry["key"], principal=None if principal is None else str(principal)
        )
    return CredentialsFile(api_url=api_url, profiles=profiles)


def resolve_connection(
    profile: str | None = None,
    *,
    api_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """Find the API URL and key.

    URL: `api_url` argument, else JITGATE_API_URL, else credentials.yaml, else the default.
    Key: JITGATE_API_KEY, else the profile of credentials.yaml named by `profile`, else by
    JITGATE_PROFILE, else `admin`. Raises `Unauthenticated` when no key can be found.
    """
    env = os.environ if environ is None else environ
    env_url = env.get(ENV_API_URL) or None
    env_key = env.get(ENV_API_KEY) or None

    if env_key is not None:
        url = api_url or env_url or DEFAULT_API_URL
        return Connection(api_url=url, api_key=env_key, profile=None, source=ENV_API_KEY)

    profile_name = profile or env.get(ENV_PROFILE) or DEFAULT_PROFILE
    path = credentials_path(env)
    try:
        credentials = load_credentials(path)
    except FileNotFoundError:
        raise Unauthenticated(
            f"no API key: set {ENV_API_KEY}, or run `jitgate up` to write {path}", field=str(path)
        ) from None

    if profile_name not in credentials.profiles:
        known = ", ".join(sorted(credentials.profiles)) or "none"
        raise Unauthenticated(
            f"profile {profile_name!r} not found in {path} (profiles: {known})", field="profile", value=profile_name
        )
    url = api_url or env_url or credentials.api_url or DEFAULT_API_URL
    return Connection(
        api_url=url, api_key=credentials.profiles[profile_name].key, profile=profile_name, source=str(path)
    )


# --- YAML -------------------------------------------------------------------------------------


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        return _parse_flat_yaml(text, path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: invalid YAML: {exc}", field=str(path)) from None


def _parse_flat_yaml(text: str, path: Path) -> dict[str, Any]:
    """Parse nested block mappings whose leaves are scalars or one-line flow mappings."""
    root: dict[str, Any] = {}
    # Stack of (indent of the keys, mapping); the innermost entry is the mapping being filled.
    stack: list[tuple[int, dict[str, Any]]] = [(0, root)]
    pending_key: tuple[int, dict[str, Any], str] | None = None

    for line_number, raw_line in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw_line).rstrip()
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if line[indent:indent + 1] == "\t":
            raise _yaml_error(path, line_number, "tabs are not allowed for indentation")
        key, value = _split_key_value(line.strip(), path, line_number)

        # A key without a value opens a nested mapping when the next line is indented deeper.
        if pending_key is not None:
            parent_indent, parent, parent_key = pending_key
            pending_key = None
            if indent > parent_indent:
                child: dict[str, Any] = {}
                parent[parent_key] = child
                stack.append((indent, child))
        while len(stack) > 1 and indent < stack[-1][0]:
            stack.pop()
        if indent != stack[-1][0]:
            raise _yaml_error(path, line_number, "indentation does not match any enclosing mapping")
        mapping = stack[-1][1]

        value = value.strip()
        if not value:
            mapping[key] = None
            pending_key = (indent, mapping, key)
        elif value.startswith("{"):
            mapping[key] = _parse_flow_mapping(value, path, line_number)
        else:
            mapping[key] = _parse_scalar(value, path, line_number)
    return root


def _split_key_value(text: str, path: Path, line_number: int) -> tuple[str, str]:
    # As in YAML, only a colon followed by a space or the end of the line separates the key,
    # so `api_url: http://host:8000` splits after `api_url`.
    if text.endswith(":"):
        key, value = text[:-1], ""
    else:
        key, separator, value = text.partition(": ")
        if not separator:
            key = ""
    if not key.strip():
        raise _yaml_error(path, line_number, f"expected 'key: value', got {text!r}")
    return _parse_scalar(key.strip(), path, line_number), value


def _parse_flow_mapping(value: str, path: Path, line_number: int) -> dict[str, Any]:
    if not value.endswith("}"):
        raise _yaml_error(path, line_number, "a flow mapping must open and close on one line")
    result: dict[str, Any] = {}
    for item in _split_outside_quotes(value[1:-1], ","):
        if not item.strip():
            continue
        key, item_value = _split_key_value(item.strip(), path, line_number)
        result[key] = _parse_scalar(item_value.strip(), path, line_number)
    return result


def _parse_scalar(value: str, path: Path, line_number: int) -> Any:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == "'":
            return inner.replace("''", "'")
        return inner.replace('\\"', '"').replace("\\\\", "\\")
    if value[:1] in ("[", "{", "&", "*", "!", "|", ">"):
        raise _yaml_error(path, line_number, f"unsupported YAML value {value!r}; install PyYAML to read it")
    if value in ("null", "~", ""):
        return None
    if value in ("true", "false"):
        return value == "true"
    return value


def _strip_comment(line: str) -> str:
    quote: str | None = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
    return line


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    for char in text:
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == separator:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _yaml_error(path: Path, line_number: int, message: str) -> InvalidInput:
    return InvalidInput(f"{path}, line {line_number}: {message}", field=str(path), line=line_number)
