"""The prediction service's own MLflow user: the sync Job and where each password goes (mocks),
and the sync script's pure parts (no network)."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml

from infra import mlflow_user_sync as sync
from infra.mlflow_user import SCRIPT, job_name
from tests.infra.infra_harness import Run, manifests, run_stack, stack_config

pytestmark = pytest.mark.infra

PLATFORM = "mlre-platform"
ADMIN_SECRET = "mlflow-secrets"
USER_SECRET = "mlflow-user-serving-secrets"
# The mocks answer RandomPassword with "p" * length: the admin's is 24, the serving user's 32.
ADMIN_PASSWORD, SERVING_PASSWORD = "p" * 24, "p" * 32


def _job(run: Run) -> dict[str, Any]:
    (job,) = [
        m
        for m in manifests(run)
        if m["kind"] == "Job" and m["metadata"]["name"].startswith("mlflow-user-")
    ]
    return job


def _by_name(run: Run, kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in manifests(run) if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def _secret_refs(manifest: dict[str, Any]) -> set[tuple[str, str]]:
    """(Secret, key) pairs a manifest's pods read: env keys; whole Secrets ("*") through
    envFrom or a volume."""
    nodes = _walk(manifest)
    keys = {(n["secretKeyRef"]["name"], n["secretKeyRef"]["key"]) for n in nodes
            if "secretKeyRef" in n}  # fmt: skip
    whole = {(n["secretRef"]["name"], "*") for n in nodes if "secretRef" in n}
    volumes = {(n["secret"]["secretName"], "*") for n in nodes
               if isinstance(n.get("secret"), dict) and "secretName" in n["secret"]}  # fmt: skip
    return keys | whole | volumes


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node, *(d for v in node.values() for d in _walk(v))]
    if isinstance(node, list):
        return [d for v in node for d in _walk(v)]
    return []


def test_component_and_job_exist(stack_run: Run) -> None:
    assert stack_run.of_type("mlre:infra:MlflowUser")
    job = _job(stack_run)
    assert job["metadata"]["namespace"] == PLATFORM
    assert re.fullmatch(r"mlflow-user-serving-[0-9a-f]{10}", job["metadata"]["name"])


def test_job_is_bounded_hardened_and_has_no_token(stack_run: Run) -> None:
    spec = _job(stack_run)["spec"]
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] <= 5
    assert spec["activeDeadlineSeconds"] > sync.READY_ATTEMPTS * sync.READY_INTERVAL_S
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_job_runs_the_script_in_the_mlflow_image(stack_runs: dict[str, Run], stack: str) -> None:
    run = stack_runs[stack]
    pod = _job(run)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == yaml.safe_load(stack_config(stack)["mlre:mlflowImage"])
    assert container["command"] == ["python", f"/opt/mlre/{SCRIPT.name}"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "script"]
    script = _by_name(run, "ConfigMap", volume["configMap"]["name"])
    assert script["data"] == {SCRIPT.name: SCRIPT.read_text()}


def test_job_env_names_the_user_and_reads_passwords_from_secrets(stack_run: Run) -> None:
    (container,) = _job(stack_run)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[sync.ENV_URL]["value"] == f"http://mlflow.{PLATFORM}.svc.cluster.local"
    assert env[sync.ENV_ADMIN_USERNAME]["value"] == "admin"
    assert env[sync.ENV_USERNAME]["value"] == "serving"
    assert env[sync.ENV_ADMIN_PASSWORD]["valueFrom"]["secretKeyRef"] == {
        "name": ADMIN_SECRET,
        "key": sync.ENV_ADMIN_PASSWORD,
    }
    assert env[sync.ENV_PASSWORD]["valueFrom"]["secretKeyRef"] == {
        "name": USER_SECRET,
        "key": sync.ENV_PASSWORD,
    }
    assert not any("value" in e and "ppp" in e["value"] for e in env.values())
    assert _by_name(stack_run, "Secret", USER_SECRET)["stringData"] == {
        sync.ENV_PASSWORD: SERVING_PASSWORD
    }


def test_serving_gets_its_own_user_and_never_the_admin_password(stack_run: Run) -> None:
    deployment = _by_name(stack_run, "Deployment", "serving")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_USERNAME"] == "serving"
    secret = _by_name(stack_run, "Secret", "serving-secrets")["stringData"]
    assert secret["MLFLOW_TRACKING_PASSWORD"] == SERVING_PASSWORD
    assert ADMIN_PASSWORD not in secret.values()
    assert not [ref for ref in _secret_refs(deployment) if ref[0] == ADMIN_SECRET]


def test_only_mlflow_and_the_job_read_the_admin_password(stack_run: Run) -> None:
    readers = {
        (m["kind"], m["metadata"]["name"])
        for m in manifests(stack_run)
        if (ADMIN_SECRET, sync.ENV_ADMIN_PASSWORD) in _secret_refs(m)
        or (ADMIN_SECRET, "*") in _secret_refs(m)
    }
    assert readers == {("Deployment", "mlflow"), ("Job", _job(stack_run)["metadata"]["name"])}


def test_mlflow_gets_a_static_csrf_key_from_its_secret(stack_run: Run) -> None:
    (container,) = _by_name(stack_run, "Deployment", "mlflow")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in container["env"]}
    ref = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": ADMIN_SECRET, "key": "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    assert _by_name(stack_run, "Secret", ADMIN_SECRET)["stringData"][ref["key"]]


def test_serving_deployment_waits_for_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, pulumi.ResourceOptions | None] = {}

    class Recording(k8s.apps.v1.Deployment):
        def __init__(self, resource_name: str, *args: Any, **kwargs: Any) -> None:
            seen[resource_name] = kwargs.get("opts")
            super().__init__(resource_name, *args, **kwargs)

    monkeypatch.setattr(k8s.apps.v1, "Deployment", Recording)
    run_stack("dev")
    (name,) = [n for n in seen if n.endswith("-serving-deployment")]
    depends_on = seen[name].depends_on
    assert any(isinstance(d, k8s.batch.v1.Job) for d in depends_on)


def test_job_name_changes_with_the_password_or_the_script() -> None:
    base = job_name("serving", "pw-1", "script")
    assert base == job_name("serving", "pw-1", "script")
    assert base != job_name("serving", "pw-2", "script")
    assert base != job_name("serving", "pw-1", "script v2")
    assert "pw-1" not in base
    assert len(base) <= 63  # a Job name is also a label value


# --- the script's pure parts -------------------------------------------------------------------

ENV = {
    sync.ENV_URL: "http://mlflow.ns.svc.cluster.local/",
    sync.ENV_ADMIN_USERNAME: "admin",
    sync.ENV_ADMIN_PASSWORD: "admin-pw",
    sync.ENV_USERNAME: "serving",
    sync.ENV_PASSWORD: "serving-pw",
}


def test_config_from_env_strips_the_url_and_names_missing_variables() -> None:
    config = sync.config_from_env(ENV)
    assert config.url == "http://mlflow.ns.svc.cluster.local"
    with pytest.raises(sync.SyncError, match=f"{sync.ENV_ADMIN_PASSWORD}, {sync.ENV_PASSWORD}"):
        sync.config_from_env({**ENV, sync.ENV_ADMIN_PASSWORD: "", sync.ENV_PASSWORD: ""})


def test_config_refuses_the_admin_as_target_user() -> None:
    with pytest.raises(sync.SyncError, match="must not be the admin"):
        sync.config_from_env({**ENV, sync.ENV_USERNAME: "admin"})


def test_create_request_is_json_as_the_admin() -> None:
    request = sync.create_request(sync.config_from_env(ENV))
    assert request.get_method() == "POST"
    assert request.full_url == f"http://mlflow.ns.svc.cluster.local{sync.CREATE_PATH}"
    assert json.loads(request.data) == {"username": "serving", "password": "serving-pw"}
    scheme, token = request.get_header("Authorization").split()
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == "admin:admin-pw"


@pytest.mark.parametrize(
    ("response", "exists"),
    [((200, '{"user": {}}'), False), ((400, '{"error_code": "RESOURCE_ALREADY_EXISTS"}'), True)],
)
def test_user_exists_reads_the_create_answer(response: sync.Response, exists: bool) -> None:
    assert sync.user_exists(response) is exists


@pytest.mark.parametrize(
    ("status", "hint"), [(401, sync.ENV_ADMIN_PASSWORD), (403, "admin?"), (500, "HTTP 500")]
)
def test_other_create_answers_fail_with_a_hint(status: int, hint: str) -> None:
    with pytest.raises(sync.SyncError, match=re.escape(hint)):
        sync.user_exists((status, "no"))


class FakeMlflow:
    """Answers the sync's requests from a script of responses; records what was asked."""

    def __init__(self, answers: list[sync.Response | OSError]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, Any]] = []

    def __call__(self, request: urllib.request.Request) -> sync.Response:
        path = request.full_url.split("cluster.local", 1)[-1]
        body = json.loads(request.data) if request.data else None
        self.asked.append((request.get_method(), path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


def test_wait_until_ready_retries_then_proceeds() -> None:
    send, sleeps = FakeMlflow([OSError("refused"), (503, ""), (200, "OK")]), []
    attempts = sync.wait_until_ready(
        "http://mlflow.ns.svc.cluster.local", send, sleeps.append, attempts=5, interval_s=2
    )
    assert attempts == 3
    assert sleeps == [2, 2]
    assert [a[1] for a in send.asked] == [sync.HEALTH_PATH] * 3


def test_wait_until_ready_gives_up_after_the_bound() -> None:
    send, sleeps = FakeMlflow([OSError("refused")] * 4), []
    with pytest.raises(sync.SyncError, match="not ready after 4 attempts"):
        sync.wait_until_ready("http://x", send, sleeps.append, attempts=4, interval_s=1)
    assert len(sleeps) == 3  # no pointless sleep after the last try


def test_sync_creates_a_new_user_and_makes_sure_it_is_no_admin() -> None:
    send = FakeMlflow([(200, "{}"), (200, "{}")])
    assert sync.sync_user(sync.config_from_env(ENV), send) == "created"
    assert [(m, p) for m, p, _ in send.asked] == [
        ("POST", sync.CREATE_PATH),
        ("PATCH", sync.UPDATE_ADMIN_PATH),
    ]
    assert send.asked[1][2] == {"username": "serving", "is_admin": False}


def test_sync_sets_the_password_of_an_existing_user() -> None:
    send = FakeMlflow([(400, "RESOURCE_ALREADY_EXISTS"), (200, "{}"), (200, "{}")])
    assert sync.sync_user(sync.config_from_env(ENV), send) == "password updated"
    assert [(m, p) for m, p, _ in send.asked] == [
        ("POST", sync.CREATE_PATH),
        ("PATCH", sync.UPDATE_PASSWORD_PATH),
        ("PATCH", sync.UPDATE_ADMIN_PATH),
    ]
    assert send.asked[1][2] == {"username": "serving", "password": "serving-pw"}


def test_sync_fails_when_the_password_update_is_refused() -> None:
    send = FakeMlflow([(400, "RESOURCE_ALREADY_EXISTS"), (403, "Permission denied")])
    with pytest.raises(sync.SyncError, match="setting the user's password failed: HTTP 403"):
        sync.sync_user(sync.config_from_env(ENV), send)
