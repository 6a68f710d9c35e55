"""Flow-run Jobs read the Prefect credential from the Secret; the worker needs no Secret rights.

The credential is the API key (prod: Prefect Cloud) or the in-cluster server's basic-auth string
(dev: mlre:prefectServer); prefect-kubernetes has a pair of settings for each.

The Job is built along prefect-kubernetes' own path for a flow run (the pool's base template,
`from_template_and_values`, `prepare_for_flow_run`, then `KubernetesWorker._create_job`), with the
worker's settings taken from the worker Deployment the Pulumi program declares. Only the
Kubernetes API calls are stand-ins, which record what the worker would send.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, ClassVar

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_KEY,
    PREFECT_API_URL,
    temporary_settings,
)
from prefect_kubernetes import worker as k8s_worker

from flows import work_pools
from infra.prefect_worker import API_KEY_ENTRY, API_SECRET, AUTH_STRING_ENTRY
from mlre import k8s_labels
from tests.infra.infra_harness import TEST_SECRETS, Run, manifests, runs_prefect_server

pytestmark = pytest.mark.infra

API_KEY = TEST_SECRETS["mlre:prefectApiKey"]
AUTH_STRING = "admin:" + "p" * 32  # the in-cluster server's, from the mocked RandomPassword
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlre:abc1234"
SETTINGS_PREFIX = "PREFECT_INTEGRATIONS_KUBERNETES_"
SECRET_WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


def _credential(run: Run) -> tuple[str, str]:
    """The env var and value of the credential this stack's clients send."""
    return (
        (AUTH_STRING_ENTRY, AUTH_STRING) if runs_prefect_server(run) else (API_KEY_ENTRY, API_KEY)
    )


def _objects(run: Run, kind: str, name: str) -> list[dict[str, Any]]:
    return [m for m in manifests(run) if m["kind"] == kind and m["metadata"]["name"] == name]


def _worker_container(run: Run, pool: str) -> dict[str, Any]:
    (deployment,) = _objects(run, "Deployment", f"prefect-worker-{pool}")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _worker_settings(run: Run, pool: str) -> dict[str, str]:
    """The prefect-kubernetes settings the worker Deployment sets (plain env values)."""
    return {
        e["name"]: e["value"]
        for e in _worker_container(run, pool)["env"]
        if e["name"].startswith(SETTINGS_PREFIX)
    }


class _JobsApi:
    """Stands in for kubernetes_asyncio's BatchV1Api: records the Jobs the worker submits."""

    submitted: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, client: object) -> None:
        pass

    async def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
        self.submitted.append(body)
        return body


class _CoreApi:
    """Stands in for CoreV1Api: any call (Secrets included) is recorded, then refused."""

    calls: ClassVar[list[str]] = []

    def __init__(self, client: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AssertionError(f"the worker called CoreV1Api.{name}")


async def _submit(pool: str) -> dict[str, Any]:
    """The Job manifest the worker sends to the API server for one flow run on `pool`."""
    template = work_pools.base_job_template(pool)
    # No block or variable references in our templates: the Prefect client is never used.
    configuration = await k8s_worker.KubernetesWorkerJobConfiguration.from_template_and_values(
        template, {"image": IMAGE}, client=object()
    )
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="api-key-check"))
    worker = k8s_worker.KubernetesWorker(work_pool_name=pool)
    await worker._create_job(configuration, client=object())
    return _JobsApi.submitted[-1]


@pytest.fixture
def submit(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Submit one flow run as a worker started with `settings` (the Deployment's env) would."""
    monkeypatch.setattr(k8s_worker, "BatchV1Api", _JobsApi)
    monkeypatch.setattr(k8s_worker, "CoreV1Api", _CoreApi)
    _CoreApi.calls.clear()

    def _run(
        pool: str, settings: dict[str, str], credential: str = API_KEY_ENTRY
    ) -> dict[str, Any]:
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        api = {PREFECT_API_URL: "https://prefect.example.com/api"}
        if credential == API_KEY_ENTRY:
            api[PREFECT_API_KEY] = API_KEY
        else:
            api[PREFECT_API_AUTH_STRING] = AUTH_STRING
        # The worker's own settings: prepare_for_flow_run copies them into the Job's env.
        with temporary_settings(api):
            return asyncio.run(_submit(pool))

    return _run


@pytest.mark.parametrize("pool", work_pools.KUBERNETES_POOLS)
def test_flow_run_job_never_carries_the_credential(
    pool: str, stack_runs: dict[str, Run], submit: Any
) -> None:
    for stack, run in stack_runs.items():
        credential, value = _credential(run)
        job = submit(pool, _worker_settings(run, pool), credential)
        assert value not in json.dumps(job), f"{stack}/{pool}: {credential} in the Job manifest"
        (container,) = job["spec"]["template"]["spec"]["containers"]
        (entry,) = [e for e in container["env"] if e["name"] == credential]
        assert entry == {
            "name": credential,
            "valueFrom": {"secretKeyRef": {"name": API_SECRET, "key": credential}},
        }
        # The Secret it names exists in the Job's namespace and holds that credential only.
        namespace = job["metadata"]["namespace"]
        (secret,) = [s for s in _objects(run, "Secret", API_SECRET)
                     if s["metadata"]["namespace"] == namespace]  # fmt: skip
        assert secret["stringData"] == {credential: value}
        assert namespace == k8s_labels.FLOWS_NAMESPACE
        # No Secret created or read on the way: the Role needs no rights on Secrets.
        assert _CoreApi.calls == []


@pytest.mark.parametrize(("credential", "value"), [(API_KEY_ENTRY, API_KEY),
                                                   (AUTH_STRING_ENTRY, AUTH_STRING)])  # fmt: skip
def test_without_the_settings_the_credential_would_be_plain(
    submit: Any, credential: str, value: str
) -> None:
    # prefect-kubernetes' default, which the check above would catch.
    job = submit(k8s_labels.CPU_WORK_POOL, {}, credential)
    assert value in json.dumps(job)


def test_workers_name_the_secret_and_its_key(stack_runs: dict[str, Run]) -> None:
    for run in stack_runs.values():
        credential, _ = _credential(run)
        setting = "API_AUTH_STRING" if credential == AUTH_STRING_ENTRY else "API_KEY"
        for pool in work_pools.KUBERNETES_POOLS:
            settings = _worker_settings(run, pool)
            assert settings == {
                f"{SETTINGS_PREFIX}WORKER_{setting}_SECRET_NAME": API_SECRET,
                f"{SETTINGS_PREFIX}WORKER_{setting}_SECRET_KEY": credential,
            }
            # The worker itself reads the same Secret; it never gets the other credential.
            env = {e["name"]: e for e in _worker_container(run, pool)["env"]}
            assert env[credential]["valueFrom"]["secretKeyRef"] == {
                "name": API_SECRET,
                "key": credential,
            }
            assert not ({API_KEY_ENTRY, AUTH_STRING_ENTRY} - {credential}) & set(env)
            # Never the mode where the worker writes a Secret of its own.
            assert f"{SETTINGS_PREFIX}WORKER_CREATE_SECRET_FOR_API_KEY" not in settings
            assert f"{SETTINGS_PREFIX}WORKER_STORE_ENV_AS_SECRET" not in settings


def test_worker_role_cannot_write_secrets(stack_runs: dict[str, Run]) -> None:
    for run in stack_runs.values():
        (role,) = _objects(run, "Role", "prefect-worker")
        secret_rules = [r for r in role["rules"] if {"secrets", "*"} & set(r["resources"])]
        for rule in secret_rules:
            assert not SECRET_WRITE_VERBS & set(rule["verbs"]), rule
        # Not even read: the kubelet resolves the secretKeyRef, not the worker.
        assert secret_rules == []
