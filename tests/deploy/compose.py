"""docker-compose.yml read as compose reads it, for the deploy tests: .env parsing, variable
substitution (``interpolate`` agrees with `docker-compose config`, checked in test_compose), and
the API keys that .env.example ships, with which the compose services run here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; $$ is a literal $.
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


class MissingVariable(ValueError):
    """A variable without a default is unset (or empty, for ``:?``): compose refuses the file."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose reads .env (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution over a loaded file; an unset variable without a default
    is a MissingVariable that names it (and says ${VAR:?message}'s message)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: _substitute(match, env), value)
    return value


def _substitute(match: re.Match, env: dict[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    name, op, arg = match["name"] or match["bare"], match["op"], match["arg"]
    value = env.get(name)
    missing = value is None or (op is not None and op.startswith(":") and value == "")
    if not missing:
        return value
    if op in (":-", "-"):
        return arg
    raise MissingVariable(f"${{{name}}} is not set and has no default" + (f": {arg}" if arg else ""))


def variables_used(document: Any) -> set[str]:
    """Names of the variables a loaded YAML document's values use (comments are not values)."""
    if isinstance(document, dict):
        return set().union(*map(variables_used, document.values()))
    if isinstance(document, list):
        return set().union(*map(variables_used, document))
    if isinstance(document, str):
        return {m["name"] or m["bare"] for m in _VARIABLE.finditer(document) if m.group(0) != "$$"}
    return set()


def required_variables(document: Any) -> set[str]:
    """Variables used as ${VAR:?message} (or ${VAR?message}): no default, .env must set them."""
    if isinstance(document, dict):
        return set().union(*map(required_variables, document.values()))
    if isinstance(document, list):
        return set().union(*map(required_variables, document))
    if isinstance(document, str):
        return {m["name"] for m in _VARIABLE.finditer(document) if (m["op"] or "").endswith("?")}
    return set()


def tenant_keys(api_keys: str) -> dict[str, str]:
    """tenant -> key, from DESCENT_API_KEYS written as "tenant:key,tenant:key"."""
    pairs = [item.partition(":") for item in re.split(r"[,\s]+", api_keys.strip()) if item]
    assert all(sep for _, sep, _ in pairs), "the keys in .env.example name their tenants (tenant:key)"
    return {tenant: key for tenant, _, key in pairs}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


RAW = yaml.safe_load(COMPOSE_FILE.read_text())
ENV = read_env_file(ENV_EXAMPLE)
COMPOSE = interpolate(RAW, ENV)  # what `docker compose up` runs with .env = .env.example
SERVICES = COMPOSE["services"]
REQUIRED = required_variables(RAW)
TENANT_KEYS = tenant_keys(SERVICES["api"]["environment"]["DESCENT_API_KEYS"])
METRICS_KEY = SERVICES["api"]["environment"]["DESCENT_METRICS_KEY"]
