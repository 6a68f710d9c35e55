"""Create or update one non-admin MLflow basic-auth user through MLflow's auth REST API.

Run by the `MlflowUser` Job (infra/mlflow_user.py) in the MLflow image, from a ConfigMap: so it
uses the standard library only and imports nothing from this repository. It waits for MLflow
(bounded), creates the user, or, when it exists, sets its password; then makes sure the user is
not an admin. Running it twice leaves the same state. Configuration comes from the environment
(`ENV_*` below); the admin password reaches only this process and MLflow.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ENV_URL = "MLFLOW_URL"
ENV_ADMIN_USERNAME = "MLFLOW_ADMIN_USERNAME"
ENV_ADMIN_PASSWORD = "MLFLOW_AUTH_ADMIN_PASSWORD"  # the key MLflow's own Secret holds it under
ENV_USERNAME = "MLFLOW_USER_NAME"
ENV_PASSWORD = "MLFLOW_USER_PASSWORD"
REQUIRED = (ENV_URL, ENV_ADMIN_USERNAME, ENV_ADMIN_PASSWORD, ENV_USERNAME, ENV_PASSWORD)

HEALTH_PATH = "/health"
CREATE_PATH = "/api/2.0/mlflow/users/create"
UPDATE_PASSWORD_PATH = "/api/2.0/mlflow/users/update-password"
UPDATE_ADMIN_PATH = "/api/2.0/mlflow/users/update-admin"
READY_ATTEMPTS = 60  # x READY_INTERVAL_S: five minutes for MLflow to come up
READY_INTERVAL_S = 5.0
TIMEOUT_S = 10.0

# (status, body) of one HTTP exchange; a connection failure raises OSError.
Response = tuple[int, str]
Send = Callable[[urllib.request.Request], Response]


class SyncError(RuntimeError):
    """The user could not be synced; the message says why and what to check."""


@dataclass(frozen=True)
class SyncConfig:
    """Where MLflow is, who acts (the admin) and which user to create or update."""

    url: str
    admin_username: str
    admin_password: str
    username: str
    password: str


def config_from_env(env: Mapping[str, str]) -> SyncConfig:
    """The sync's settings from the environment; a missing value or the admin as the target
    user (whose password this would overwrite) is a SyncError."""
    missing = [key for key in REQUIRED if not env.get(key)]
    if missing:
        raise SyncError(f"missing environment variable(s) {', '.join(missing)}")
    config = SyncConfig(
        url=env[ENV_URL].rstrip("/"),
        admin_username=env[ENV_ADMIN_USERNAME],
        admin_password=env[ENV_ADMIN_PASSWORD],
        username=env[ENV_USERNAME],
        password=env[ENV_PASSWORD],
    )
    if config.username == config.admin_username:
        raise SyncError(f"{ENV_USERNAME} must not be the admin user {config.admin_username!r}")
    return config


def basic_auth(username: str, password: str) -> str:
    """An HTTP Basic Authorization header value."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def api_request(config: SyncConfig, method: str, path: str, body: dict) -> urllib.request.Request:
    """A JSON request to MLflow's auth API, as the admin."""
    return urllib.request.Request(
        f"{config.url}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": basic_auth(config.admin_username, config.admin_password),
        },
    )


def create_request(config: SyncConfig) -> urllib.request.Request:
    """POST users/create for the target user."""
    body = {"username": config.username, "password": config.password}
    return api_request(config, "POST", CREATE_PATH, body)


def update_password_request(config: SyncConfig) -> urllib.request.Request:
    """PATCH users/update-password: the admin sets the target user's password."""
    body = {"username": config.username, "password": config.password}
    return api_request(config, "PATCH", UPDATE_PASSWORD_PATH, body)


def not_admin_request(config: SyncConfig) -> urllib.request.Request:
    """PATCH users/update-admin: the target user is not an admin."""
    body = {"username": config.username, "is_admin": False}
    return api_request(config, "PATCH", UPDATE_ADMIN_PATH, body)


def user_exists(response: Response) -> bool:
    """Whether users/create answered 'already exists' (False when it created the user)."""
    status, body = response
    if status == 200:
        return False
    if status == 400 and "RESOURCE_ALREADY_EXISTS" in body:
        return True
    raise SyncError(f"creating the user failed: HTTP {status}: {_short(body)}{_hint(status)}")


def expect_ok(response: Response, what: str) -> None:
    """A SyncError unless the exchange answered 200."""
    status, body = response
    if status != 200:
        raise SyncError(f"{what} failed: HTTP {status}: {_short(body)}{_hint(status)}")


def _hint(status: int) -> str:
    if status == 401:
        return f" (check {ENV_ADMIN_USERNAME}/{ENV_ADMIN_PASSWORD} against MLflow's admin)"
    if status == 403:
        return f" (is {ENV_ADMIN_USERNAME} MLflow's admin?)"
    return ""


def _short(body: str, limit: int = 300) -> str:
    return body if len(body) <= limit else body[:limit] + "..."


def send(request: urllib.request.Request) -> Response:
    """One HTTP exchange; an HTTP error status is an answer, a connection failure raises."""
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def wait_until_ready(
    url: str,
    send: Send = send,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int = READY_ATTEMPTS,
    interval_s: float = READY_INTERVAL_S,
) -> int:
    """Poll GET /health until it answers 200; returns the attempts it took. After `attempts`
    failures a SyncError (the Job's backoff then retries the whole pod)."""
    last = "no answer"
    for attempt in range(1, attempts + 1):
        try:
            status, _ = send(urllib.request.Request(f"{url}{HEALTH_PATH}"))
            if status == 200:
                return attempt
            last = f"HTTP {status}"
        except OSError as error:  # refused, DNS not there yet, timeout
            last = str(error)
        if attempt < attempts:
            sleep(interval_s)
    raise SyncError(f"MLflow at {url} was not ready after {attempts} attempts ({last})")


def sync_user(config: SyncConfig, send: Send = send) -> str:
    """Create the user or set its password; either way not an admin. Returns what happened."""
    outcome = "password updated" if user_exists(send(create_request(config))) else "created"
    if outcome == "password updated":
        expect_ok(send(update_password_request(config)), "setting the user's password")
    expect_ok(send(not_admin_request(config)), "revoking admin rights")
    return outcome


def main(env: Mapping[str, str] | None = None) -> int:
    """Entry point of the Job's container: exit 0 when the user is in place."""
    try:
        config = config_from_env(os.environ if env is None else env)
        wait_until_ready(config.url)
        outcome = sync_user(config)
    except (SyncError, OSError) as error:  # OSError: MLflow went away mid-sync
        print(f"mlflow-user-sync: {error}", file=sys.stderr)
        return 1
    print(f"mlflow-user-sync: user {config.username!r} {outcome} at {config.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
