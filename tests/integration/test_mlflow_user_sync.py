"""The MlflowUser Job's script against a real basic-auth MLflow server configured like the cloud's:
it creates the prediction service's user, a re-run converges, and that user reads the registry
but cannot move an alias or change a model it did not create."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from infra import mlflow_user_sync as sync
from infra.serving_service import MLFLOW_USER
from tests.support.mlflow_auth_server import BasicAuthMlflowServer, start_basic_auth_mlflow

pytestmark = pytest.mark.integration

MODEL = "fraud_model"
SCRIPT = Path(sync.__file__)


@pytest.fixture(scope="module")
def auth_mlflow(servers_root: Path) -> Iterator[BasicAuthMlflowServer]:
    server = start_basic_auth_mlflow(servers_root)
    try:
        yield server
    finally:
        server.stop()


def _run_sync(server: BasicAuthMlflowServer, password: str) -> subprocess.CompletedProcess[str]:
    """The script as the Job runs it: its own process, configured by the environment only."""
    env = {
        "PATH": os.environ["PATH"],
        sync.ENV_URL: server.tracking_uri,
        sync.ENV_ADMIN_USERNAME: server.admin_username,
        sync.ENV_ADMIN_PASSWORD: server.admin_password,
        sync.ENV_USERNAME: MLFLOW_USER,
        sync.ENV_PASSWORD: password,
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _api(auth: tuple[str, str]) -> requests.Session:
    """An HTTP session that sends basic-auth credentials."""
    session = requests.Session()
    session.auth = auth
    return session


def _post(session: requests.Session, url: str, body: dict) -> dict:
    response = session.post(url, json=body)
    response.raise_for_status()
    return response.json()


def _register_champion(admin: requests.Session, api: str) -> dict:
    """As the admin, what the training flow leaves: a model with two versions of one run,
    version 1 aliased `champion`. Returns a version-create body (for the refused attempt)."""
    run = _post(admin, f"{api}/runs/create", {"experiment_id": "0"})["run"]["info"]
    version = {
        "name": MODEL,
        "source": f"{run['artifact_uri']}/model",
        "run_id": run["run_id"],
    }
    _post(admin, f"{api}/registered-models/create", {"name": MODEL})
    for _ in range(2):
        _post(admin, f"{api}/model-versions/create", version)
    _post(admin, f"{api}/registered-models/alias", {"name": MODEL, "alias": "champion",
                                                    "version": "1"})  # fmt: skip
    return version


def _champion(session: requests.Session, api: str) -> requests.Response:
    """GET the version the `champion` alias points at."""
    alias = {"name": MODEL, "alias": "champion"}
    return session.get(f"{api}/registered-models/alias", params=alias)


def test_serving_user_is_created_idempotently_and_reads_only(
    auth_mlflow: BasicAuthMlflowServer,
) -> None:
    api = f"{auth_mlflow.tracking_uri}/api/2.0/mlflow"
    admin = _api((auth_mlflow.admin_username, auth_mlflow.admin_password))
    version = _register_champion(admin, api)

    first = _run_sync(auth_mlflow, "first-password-0123456789")
    assert first.returncode == 0, first.stderr
    assert f"user '{MLFLOW_USER}' created" in first.stdout
    again = _run_sync(auth_mlflow, "first-password-0123456789")
    assert again.returncode == 0, again.stderr
    assert "password updated" in again.stdout
    rotated = _run_sync(auth_mlflow, "second-password-0123456789")  # a new RandomPassword
    assert rotated.returncode == 0, rotated.stderr

    user = admin.get(f"{api}/users/get", params={"username": MLFLOW_USER}).json()["user"]
    assert user["is_admin"] is False
    old = _api((MLFLOW_USER, "first-password-0123456789"))
    assert old.get(f"{api}/registered-models/get", params={"name": MODEL}).status_code == 401

    serving = _api((MLFLOW_USER, "second-password-0123456789"))
    # What the prediction service does: read the model and resolve the champion alias.
    assert serving.get(f"{api}/registered-models/get", params={"name": MODEL}).ok
    by_alias = _champion(serving, api)
    assert by_alias.status_code == 200
    assert by_alias.json()["model_version"]["version"] == "1"
    # What it must not do: move the alias, add or delete versions, delete the model, escalate.
    move = {"name": MODEL, "alias": "champion", "version": "2"}
    assert serving.post(f"{api}/registered-models/alias", json=move).status_code == 403
    assert serving.post(f"{api}/model-versions/create", json=version).status_code == 403
    delete = {"name": MODEL, "version": "1"}
    assert serving.delete(f"{api}/model-versions/delete", json=delete).status_code == 403
    assert (
        serving.delete(f"{api}/registered-models/delete", json={"name": MODEL}).status_code == 403
    )
    escalate = {"username": MLFLOW_USER, "is_admin": True}
    assert serving.patch(f"{api}/users/update-admin", json=escalate).status_code == 403
    assert _champion(admin, api).json()["model_version"]["version"] == "1"
    # Known limit (infra/README.md): without MLflow workspaces any authenticated user may create
    # a NEW model or experiment (it gets MANAGE on that one only); existing ones stay untouched.
    created = serving.post(f"{api}/registered-models/create", json={"name": "serving-made"})
    assert created.status_code == 200


def test_wrong_admin_password_fails_the_job_with_a_reason(
    auth_mlflow: BasicAuthMlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_mlflow, "admin_password", "not-the-admin-password")
    done = _run_sync(auth_mlflow, "whatever-password-0123456789")
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr
    assert sync.ENV_ADMIN_PASSWORD in done.stderr  # names what to check
