"""Issue 17, part 5: the in-cluster Prefect server (mlre:prefectServer), asserted on the mocks.

On in dev, off in prod: its objects exist exactly when it is on, the workers, flow runs and alert
relay reach it in-cluster with the basic-auth string from a Secret, its database is its own role
with verify-full TLS, the settings it is given are real Prefect settings, and the network lets
only its clients in and only PostgreSQL out.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from prefect.settings import Settings
from prefect_kubernetes.settings import KubernetesSettings

from infra import db_bootstrap, db_roles, prefect_server
from infra.policy import rules
from infra.prefect_worker import API_KEY_ENTRY, API_SECRET, AUTH_STRING_ENTRY
from mlre import k8s_labels
from tests.infra.infra_harness import (
    PUBLIC_EXPOSURE,
    Run,
    manifests,
    run_stack,
    stack_config,
    violations,
)
from tests.infra.netpol import Pod, allowed
from tests.infra.test_network_security import CLIENT, FLOWS, IN_VPC, MONITORING, PLATFORM, STRANGER
from tests.infra.test_network_security import S3 as INTERNET

pytestmark = pytest.mark.infra

APP, PORT = prefect_server.APP, prefect_server.PORT
SECRET = f"{APP}-secrets"
API_URL = f"http://{APP}.{PLATFORM}.svc.cluster.local:{PORT}/api"
AUTH = "admin:" + "p" * 32  # the mocked RandomPassword (32 characters) behind the auth string
SERVER_KINDS = {"Deployment", "Service", "Secret", "ServiceAccount"}


def _objects(run: Run, kind: str, name: str) -> list[dict[str, Any]]:
    return [m for m in manifests(run) if m["kind"] == kind and m["metadata"]["name"] == name]


def _server(run: Run) -> dict[str, Any]:
    (deployment,) = _objects(run, "Deployment", APP)
    return deployment


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _secret_refs(container: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}


def _roles_script(run: Run) -> str:
    (script,) = _objects(run, "ConfigMap", f"{db_bootstrap.APP}-script")
    return script["data"][db_roles.SCRIPT_KEY]


@pytest.fixture(scope="module")
def dev_without_server() -> Run:
    """The dev stack file with the option turned off (the user brings an API)."""
    return run_stack(
        "dev",
        {"mlre:prefectServer": False, "mlre:prefectApiUrl": "https://prefect.example.com/api"},
    )


@pytest.fixture(scope="module")
def dev_public() -> Run:
    """Dev with mlre:exposeServicesPublicly: the UI behind the same load balancers as MLflow."""
    return run_stack("dev", PUBLIC_EXPOSURE)


# --- on and off ---------------------------------------------------------------------------------


def test_dev_runs_the_server_with_its_own_role_and_database(stack_runs: dict[str, Run]) -> None:
    run = stack_runs["dev"]
    found = {(m["kind"], m["metadata"]["namespace"]) for m in manifests(run)
             if m["metadata"]["name"] in {APP, SECRET}}  # fmt: skip
    assert found == {(kind, PLATFORM) for kind in SERVER_KINDS}
    # The roles Job creates role and database `prefect` with the others, from a verifier.
    script = _roles_script(run)
    assert "SELECT format('CREATE DATABASE %I OWNER %I', 'prefect', 'prefect')" in script
    (admin,) = _objects(run, "Secret", db_bootstrap.ADMIN_SECRET)
    assert admin["stringData"][db_roles.PREFECT.env_var] == db_roles.role_verifier(
        db_roles.PREFECT, "p" * 32
    )
    assert run.outputs["prefect_api_url"] == API_URL


@pytest.mark.parametrize("case", ["prod", "dev-off"])
def test_without_the_option_there_is_no_server_role_or_database(
    case: str, stack_runs: dict[str, Run], dev_without_server: Run
) -> None:
    run = stack_runs["prod"] if case == "prod" else dev_without_server
    assert not [m for m in manifests(run) if APP in m["metadata"]["name"]]
    assert not [r for r in run.resources if "prefect-server" in r.name]
    assert "'prefect'" not in _roles_script(run)
    (admin,) = _objects(run, "Secret", db_bootstrap.ADMIN_SECRET)
    assert db_roles.PREFECT.env_var not in admin["stringData"]
    assert "prefect_ui_url" not in run.outputs
    assert "prefect_login" not in run.outputs
    # The workers use the API the user brought, with its key.
    (worker,) = _objects(run, "Deployment", f"prefect-worker-{k8s_labels.GPU_WORK_POOL}")
    container = _container(worker)
    assert _plain_env(container)["PREFECT_API_URL"] == run.config["mlre:prefectApiUrl"]
    assert set(_secret_refs(container)) == {API_KEY_ENTRY}


# --- the server pod -----------------------------------------------------------------------------


def test_server_runs_prefect_server_start_from_the_pinned_prefect_image(
    stack_runs: dict[str, Run],
) -> None:
    run = stack_runs["dev"]
    deployment = _server(run)
    container = _container(deployment)
    assert container["image"] == stack_config("dev")["mlre:prefectImage"]
    assert container["image"].startswith("prefecthq/prefect:")
    assert "@sha256:" in container["image"]
    assert container["args"] == [
        "prefect",
        "server",
        "start",
        "--host",
        "0.0.0.0",
        "--port",
        "4200",
    ]
    assert "command" not in container  # the image's entrypoint stays (tini, then the args)
    # One replica, replaced rather than rolled: two would both run the scheduler and migrate.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_server_is_non_root_read_only_probed_sized_on_the_cpu_pool(
    stack_runs: dict[str, Run],
) -> None:
    pod = _server(stack_runs["dev"])["spec"]["template"]["spec"]
    container = _container(_server(stack_runs["dev"]))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == APP
    assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    # Everything Prefect writes (PREFECT_HOME, the UI bundle it copies at start) is on /tmp.
    env = _plain_env(container)
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    for key in ("PREFECT_HOME", "PREFECT_SERVER_UI_STATIC_DIRECTORY"):
        assert env[key].startswith("/tmp/"), key
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/api/health", "port": PORT}, probe
    assert container["ports"] == [{"name": "http", "containerPort": PORT}]
    resources = container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_every_setting_the_server_gets_is_one_prefect_reads(
    stack_runs: dict[str, Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prefect ignores an unknown PREFECT_* variable: a typo would silently turn TLS off.
    container = _container(_server(stack_runs["dev"]))
    given = {**_plain_env(container), **dict.fromkeys(_secret_refs(container), "from-a-secret")}
    given = {name: value for name, value in given.items() if name.startswith("PREFECT_")}
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    # Each variable is a setting under its canonical name (not a legacy alias).
    assert set(given) <= set(settings.to_environment_variables(exclude_unset=True))
    tls = settings.server.database.sqlalchemy.connect_args.tls
    assert (tls.enabled, tls.check_hostname) == (True, True)  # verify-full: CA and host name
    assert tls.ca_file == db_roles.RDS_CA_PATH
    assert str(settings.home) == given["PREFECT_HOME"]
    assert settings.server.ui.static_directory.startswith(given["PREFECT_HOME"])
    assert settings.server.ui.api_url == prefect_server.PORT_FORWARD_API_URL
    assert settings.server.analytics_enabled is False
    assert settings.server.api.auth_string.get_secret_value() == "from-a-secret"
    assert settings.server.database.connection_url.get_secret_value() == "from-a-secret"


def test_database_is_the_prefect_role_verified_against_the_mounted_ca(
    stack_runs: dict[str, Run],
) -> None:
    run = stack_runs["dev"]
    (secret,) = _objects(run, "Secret", SECRET)
    url = urlsplit(secret["stringData"][prefect_server.DATABASE_KEY])
    assert url.scheme == "postgresql+asyncpg"
    assert (url.username, url.path) == (db_roles.PREFECT.name, f"/{db_roles.PREFECT.database}")
    assert url.hostname.endswith(".rds.amazonaws.com")
    assert not url.query  # asyncpg takes TLS from Prefect's settings, not libpq's parameters
    container = _container(_server(run))
    assert _secret_refs(container)[prefect_server.DATABASE_KEY] == {
        "name": SECRET,
        "key": prefect_server.DATABASE_KEY,
    }
    pod = _server(run)["spec"]["template"]["spec"]
    (ca,) = [v for v in pod["volumes"] if "configMap" in v]
    assert ca["configMap"]["name"] == db_bootstrap.CA_CONFIG_MAP
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == ca["name"]]
    assert posixpath.join(mount["mountPath"], db_roles.RDS_CA_KEY) == db_roles.RDS_CA_PATH
    assert mount["readOnly"] is True
    # It rolls when its database password or auth string rotates.
    annotations = _server(run)["spec"]["template"]["metadata"]["annotations"]
    assert {db_bootstrap.ROLLOUT_ANNOTATION, "mlre.io/prefect-credential"} <= set(annotations)


# --- auth ---------------------------------------------------------------------------------------


def test_auth_string_is_generated_and_lives_only_in_secrets(stack_runs: dict[str, Run]) -> None:
    run = stack_runs["dev"]
    (password,) = [r for r in run.of_type("random:index/randomPassword:RandomPassword")
                   if r.name.endswith("prefect-server-auth-password")]  # fmt: skip
    assert password.inputs["length"] >= 32
    holders = {(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"])
               for m in manifests(run) if f'"{AUTH}"' in json.dumps(m)}  # fmt: skip
    assert holders == {
        ("Secret", PLATFORM, SECRET),  # the server's PREFECT_SERVER_API_AUTH_STRING
        ("Secret", FLOWS, API_SECRET),  # workers and flow-run Jobs
        ("Secret", MONITORING, "alert-relay-secrets"),  # the relay posts events
    }
    container = _container(_server(run))
    assert _secret_refs(container)[prefect_server.AUTH_KEY] == {
        "name": SECRET,
        "key": prefect_server.AUTH_KEY,
    }
    # Outputs say where to find the login, never what it is.
    assert AUTH not in json.dumps(run.outputs, default=str)
    assert run.outputs["prefect_login"] == {
        "namespace": PLATFORM,
        "secret": SECRET,
        "key": prefect_server.AUTH_KEY,
    }
    assert run.outputs["prefect_ui_url"] == API_URL.removesuffix("/api")


def test_workers_and_flow_runs_use_the_service_with_the_auth_string_by_reference(
    stack_runs: dict[str, Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = stack_runs["dev"]
    (service,) = _objects(run, "Service", APP)
    assert service["metadata"]["namespace"] == PLATFORM
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": PORT, "targetPort": "http"}]
    assert service["spec"]["selector"] == _server(run)["spec"]["template"]["metadata"]["labels"]
    for pool in (k8s_labels.CPU_WORK_POOL, k8s_labels.GPU_WORK_POOL):
        container = _container(_objects(run, "Deployment", f"prefect-worker-{pool}")[0])
        env = _plain_env(container)
        assert env["PREFECT_API_URL"] == API_URL
        # Never an API key next to it: Prefect's clients would send the key and get a 401.
        assert _secret_refs(container) == {
            AUTH_STRING_ENTRY: {"name": API_SECRET, "key": AUTH_STRING_ENTRY}
        }
        # prefect-kubernetes reads these and writes the same secretKeyRef into each flow-run
        # Job (tests/infra/test_worker_api_key.py builds one through the worker's own code).
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        worker = KubernetesSettings().worker
        assert worker.api_auth_string_secret_name == API_SECRET
        assert worker.api_auth_string_secret_key == AUTH_STRING_ENTRY
        assert worker.api_key_secret_name is None


# --- exposure -----------------------------------------------------------------------------------


def test_ui_is_published_like_mlflow_and_the_workers_stay_in_cluster(dev_public: Run) -> None:
    (private,) = _objects(dev_public, "Service", APP)
    assert private["spec"]["type"] == "ClusterIP"
    (public,) = _objects(dev_public, "Service", f"{APP}-public")
    spec, annotations = public["spec"], public["metadata"]["annotations"]
    assert spec["type"] == "LoadBalancer"
    assert spec["ports"] == [{"name": "https", "port": 443, "targetPort": "http"}]
    assert spec["loadBalancerSourceRanges"] == PUBLIC_EXPOSURE["mlre:publicSourceCidrs"]
    assert annotations["external-dns.alpha.kubernetes.io/hostname"] == "prefect.ml.example.com"
    assert (
        annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"]
        == (PUBLIC_EXPOSURE["mlre:publicCertificateArn"])
    )
    (tls,) = [p for p in rules.POLICIES if p.name == "public-service-tls"]
    assert not violations(tls, "kubernetes:core/v1:Service", public)
    kubernetes_validate.validate(public, "1.33", strict=True)
    # The browser calls the API where it loaded the UI.
    assert dev_public.outputs["prefect_ui_url"] == "https://prefect.ml.example.com"
    env = _plain_env(_container(_server(dev_public)))
    assert env["PREFECT_SERVER_UI_API_URL"] == "https://prefect.ml.example.com/api"
    assert dev_public.outputs["prefect_api_url"] == API_URL


# --- network ------------------------------------------------------------------------------------


def _pods(run: Run) -> dict[str, Pod]:
    pods = {
        m["metadata"]["name"]: Pod(
            m["metadata"]["namespace"], m["spec"]["template"]["metadata"]["labels"]
        )
        for m in manifests(run)
        if m["kind"] == "Deployment"
    }
    return pods | {"flow-run": Pod(FLOWS, {"prefect.io/flow-run-id": "0b5c"})}


@pytest.mark.parametrize(
    ("source", "target", "port", "expected"),
    [
        ("flow-run", APP, PORT, True),
        (f"prefect-worker-{k8s_labels.GPU_WORK_POOL}", APP, PORT, True),
        ("alert-relay", APP, PORT, True),
        (APP, IN_VPC, 5432, True),  # its database on RDS
        ("serving", APP, PORT, False),  # nothing else talks to it
        ("mlflow", APP, PORT, False),
        (APP, INTERNET, 443, False),  # no telemetry, no egress beyond PostgreSQL (and DNS)
        (APP, "mlflow", 5000, False),
        ("flow-run", APP, 5432, False),
    ],
)
def test_only_its_clients_reach_it_and_it_reaches_only_postgres(
    stack_runs: dict[str, Run], source: str, target: str, port: int, expected: bool
) -> None:
    run = stack_runs["dev"]
    policies = [m for m in manifests(run) if m["kind"] == "NetworkPolicy"]
    pods = _pods(run)
    assert allowed(policies, pods.get(source, source), pods.get(target, target), port) is expected


def test_published_ui_admits_the_listed_clients_only(dev_public: Run) -> None:
    policies = [m for m in manifests(dev_public) if m["kind"] == "NetworkPolicy"]
    server = _pods(dev_public)[APP]
    assert allowed(policies, CLIENT, server, PORT)  # inside mlre:publicSourceCidrs
    assert not allowed(policies, STRANGER, server, PORT)
