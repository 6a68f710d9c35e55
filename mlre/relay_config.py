"""Alert relay settings (`MLRE_RELAY_*`): where it listens, its token, where it sends events."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlre.atomic import write_atomic
from mlre.errors import ConfigError
from mlre.settings import Settings

TOKEN_FILE_NAME = "token"


class RelayConfig(BaseSettings):
    """How `python -m relay` runs (it listens on settings.host:relay_port); override with
    `MLRE_RELAY_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="MLRE_RELAY_", extra="ignore")

    token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token Alertmanager sends (default: the token file under home).",
    )
    prefect_api_url: str = Field("", description="Prefect API the events go to (default: local).")
    emit_timeout_s: float = Field(10.0, gt=0, description="Budget of one POST /api/events.")
    # How the relay authenticates to Prefect, as Prefect's own clients do: an API key (Prefect
    # Cloud, sent as a bearer token) or a self-hosted server's `user:password` auth string.
    prefect_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("MLRE_RELAY_PREFECT_API_KEY", "PREFECT_API_KEY"),
    )
    prefect_api_auth_string: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices(
            "MLRE_RELAY_PREFECT_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"
        ),
    )


def prefect_headers(config: RelayConfig) -> dict[str, str]:
    """The Authorization header Prefect expects from this relay (none for a local server)."""
    import base64

    key = config.prefect_api_key.get_secret_value()
    if key:
        return {"Authorization": f"Bearer {key}"}
    auth = config.prefect_api_auth_string.get_secret_value()
    if auth:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {}


def relay_dir(settings: Settings) -> Path:
    """The relay's ledger and token live here."""
    return settings.home / "relay"


def token_file(settings: Settings) -> Path:
    return relay_dir(settings) / TOKEN_FILE_NAME


def ensure_token_file(settings: Settings) -> Path:
    """The local token file (created once, owner-only) that the relay and Alertmanager share."""
    path = token_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path


def resolve_token(settings: Settings, config: RelayConfig) -> str:
    """MLRE_RELAY_TOKEN when set (the cloud's Secret), else the local token file."""
    token = config.token.get_secret_value().strip()
    if token:
        return token
    path = token_file(settings)
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    raise ConfigError(
        f"The alert relay has no token: set MLRE_RELAY_TOKEN or create {path} (`mlre up` does); "
        "the relay refuses to run unauthenticated."
    )


def relay_url(settings: Settings) -> str:
    """The local relay's webhook URL (what the local Alertmanager posts to)."""
    return f"http://{settings.host}:{settings.relay_port}/alerts"
