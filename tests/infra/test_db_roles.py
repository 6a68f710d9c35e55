"""Issue 19, finding 4 (and 7's sslmode): per-service PostgreSQL roles, the master credential only
in the db-admin namespace, and verify-full against the RDS CA bundle each pod really mounts.

The script's pure parts here; the script on a real PostgreSQL in
tests/integration/test_db_roles.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pulumi
import pulumi_kubernetes as k8s
import pytest

from infra import db_bootstrap, db_roles
from infra.config import InfraConfigError
from infra.db_roles import ADMIN_NAMESPACE, MASTER_USER, ServiceRole
from infra.policy import rules
from mlre import k8s_labels
from tests.infra.infra_harness import (
    ROOT,
    TEST_FILES,
    Run,
    manifests,
    run_stack,
    runs_prefect_server,
    violations,
)
from tests.infra.netpol import Pod, allowed

pytestmark = pytest.mark.infra

PLATFORM, FLOWS = "mlre-platform", k8s_labels.FLOWS_NAMESPACE
CA_PEM = (ROOT / TEST_FILES["mlre:rdsCaBundleFile"]).read_text()
# Which role (and database) each service's URL must use: (kind, name, key) of the value.
SERVICE_URLS = {
    ("Secret", "mlflow-secrets", "MLFLOW_BACKEND_STORE_URI"): db_roles.MLFLOW,
    ("Secret", "feast-secrets", "FEAST_REGISTRY_URL"): db_roles.FEAST,
    ("Secret", "serving-secrets", "MLRE_REGISTRY_URI"): db_roles.FEAST_READER,
    ("Secret", "flows-db", "MLRE_REGISTRY_URI"): db_roles.FEAST,
}
POD_OF_SECRET = {"mlflow-secrets": "mlflow", "feast-secrets": "feast", "serving-secrets": "serving"}


def _object(run: Run, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    (found,) = [
        m
        for m in manifests(run)
        if m["kind"] == kind
        and m["metadata"]["name"] == name
        and namespace in (None, m["metadata"].get("namespace"))
    ]
    return found


def _job(run: Run) -> dict[str, Any]:
    (job,) = [
        m
        for m in manifests(run)
        if m["kind"] == "Job" and m["metadata"]["name"].startswith(f"{db_bootstrap.APP}-")
    ]
    return job


def _roles(run: Run) -> tuple[ServiceRole, ...]:
    """The roles this run's config asks for (`prefect` with mlre:prefectServer)."""
    return db_roles.stack_roles(runs_prefect_server(run))


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _ca_file_mounted(run: Run, pod_spec: dict[str, Any], namespace: str) -> set[str]:
    """Paths where the pod's containers see the `rds-ca` ConfigMap's bundle."""
    config_map = _object(run, "ConfigMap", db_bootstrap.CA_CONFIG_MAP, namespace)
    volumes = {
        v["name"]
        for v in pod_spec.get("volumes") or []
        if (v.get("configMap") or {}).get("name") == db_bootstrap.CA_CONFIG_MAP
    }
    return {
        posixpath.join(mount["mountPath"], key)
        for container in pod_spec["containers"]
        for mount in container.get("volumeMounts") or []
        if mount["name"] in volumes and mount.get("readOnly")
        for key in config_map["data"]
    }


# --- the script and its inputs (pure) ----------------------------------------------------------


def test_script_holds_no_password_and_reads_each_from_its_variable() -> None:
    script = db_roles.render_script()
    assert "PASSWORD '" not in script
    assert "SCRAM-SHA-256" not in script
    for role in db_roles.ROLES:
        assert f"PASSWORD :'{role.psql_variable}';" in script
        assert f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role.name}') \\gexec" in (
            script
        )
    for database in {r.database for r in db_roles.ROLES}:
        assert f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC;' in script
    assert (
        'ALTER DEFAULT PRIVILEGES FOR ROLE "feast" IN SCHEMA public '
        'GRANT SELECT ON TABLES TO "feast_reader";'
    ) in script


def test_a_new_service_is_one_more_role() -> None:
    prefect = ServiceRole("prefect", "prefect")
    script = db_roles.render_script([*db_roles.ROLES, prefect])
    assert "SELECT format('CREATE DATABASE %I OWNER %I', 'prefect', 'prefect')" in script
    assert "\\connect prefect" in script
    assert "--set=prefect_password=$(PREFECT_PASSWORD_SCRAM)" in db_roles.job_argv(
        [prefect], "/s.sql"
    )


@pytest.mark.parametrize(
    ("roles", "match"),
    [
        ([ServiceRole("mlflow", "mlflow"), ServiceRole("mlflow", "other")], "duplicate"),
        ([ServiceRole("a", "db"), ServiceRole("b", "db")], "two owners"),
        ([ServiceRole("r", "db", reads_from="nobody")], "does not own"),
        ([ServiceRole("x", "db"), ServiceRole("r", "other", reads_from="x")], "does not own"),
        ([ServiceRole("Robert'); DROP", "db")], "not a usable"),
        ([ServiceRole(MASTER_USER, "db")], "not a usable"),
        ([ServiceRole("x", db_roles.ADMIN_DATABASE)], "not a usable"),
    ],
)
def test_bad_role_lists_are_refused(roles: list[ServiceRole], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        db_roles.render_script(roles)


def test_job_passes_every_password_as_a_variable_from_its_env_var() -> None:
    argv = db_roles.job_argv(db_roles.ROLES, "/etc/db-roles/roles.sql")
    assert argv[:4] == ["psql", "$(DATABASE_URL)", "--no-psqlrc", "--set=ON_ERROR_STOP=1"]
    assert argv[-1] == "--file=/etc/db-roles/roles.sql"
    for role in db_roles.ROLES:
        assert f"--set={role.psql_variable}=$({role.env_var})" in argv


def test_verifier_is_scram_sha_256_stable_and_per_role() -> None:
    verifier = db_roles.role_verifier(db_roles.MLFLOW, "pw-1")
    b64 = "[A-Za-z0-9+/=]"
    assert re.fullmatch(rf"SCRAM-SHA-256\$4096:{b64}{{24}}\${b64}{{44}}:{b64}{{44}}", verifier)
    assert verifier == db_roles.role_verifier(db_roles.MLFLOW, "pw-1")
    assert verifier != db_roles.role_verifier(db_roles.MLFLOW, "pw-2")
    assert verifier != db_roles.role_verifier(db_roles.FEAST, "pw-1")
    assert "pw-1" not in verifier
    with pytest.raises(ValueError, match="ASCII"):
        db_roles.role_verifier(db_roles.MLFLOW, "pässword")


def test_scram_verifier_matches_rfc_7677_test_vector() -> None:
    # RFC 7677 section 3: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    verifier = db_roles.scram_verifier("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    stored, server = (base64.b64decode(k) for k in verifier.split("$")[2].split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    )

    def sign(key: bytes) -> bytes:
        return hmac.new(key, auth.encode(), hashlib.sha256).digest()

    assert base64.b64encode(sign(server)).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(a ^ b for a, b in zip(proof, sign(stored), strict=True))
    assert hashlib.sha256(client_key).digest() == stored


def test_job_name_changes_with_the_script_or_a_password() -> None:
    base = db_bootstrap.job_name("script", {"mlflow": "v1"})
    assert base == db_bootstrap.job_name("script", {"mlflow": "v1"})
    assert base != db_bootstrap.job_name("script v2", {"mlflow": "v1"})
    assert base != db_bootstrap.job_name("script", {"mlflow": "v2"})
    assert re.fullmatch(r"db-roles-[0-9a-f]{10}", base)


# --- the stacks (mocks) ------------------------------------------------------------------------


def test_admin_namespace_enforces_the_restricted_profile(stack_run: Run) -> None:
    labels = _object(stack_run, "Namespace", ADMIN_NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_roles_job_runs_psql_restricted_once_per_change(stack_run: Run) -> None:
    job = _job(stack_run)
    assert job["metadata"]["namespace"] == ADMIN_NAMESPACE
    assert job["metadata"]["annotations"] == {"pulumi.com/replaceUnready": "true"}
    spec = job["spec"]
    assert spec["ttlSecondsAfterFinished"] == db_bootstrap.TTL_S
    assert 1 <= spec["backoffLimit"] <= 6
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["nodeSelector"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}
    (container,) = pod["containers"]
    assert container["image"].startswith("postgres:17.6-alpine@sha256:")
    assert container["command"] == db_roles.job_argv(
        _roles(stack_run), f"{db_bootstrap.SCRIPT_DIR}/{db_roles.SCRIPT_KEY}"
    )
    sc = container["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"]) == (True, False)
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # Credentials only by reference, all from the db-admin Secret.
    env = {e["name"]: e for e in container["env"]}
    for name in [db_roles.ADMIN_URL_ENV, *(r.env_var for r in _roles(stack_run))]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": db_bootstrap.ADMIN_SECRET,
            "key": name,
        }
    assert env["PGSSLMODE"]["value"] == "verify-full"
    assert db_roles.RDS_CA_PATH in _ca_file_mounted(stack_run, pod, ADMIN_NAMESPACE)
    assert env["PGSSLROOTCERT"]["value"] == db_roles.RDS_CA_PATH


def test_script_comes_from_a_config_map_and_credentials_from_the_admin_secret(
    stack_run: Run,
) -> None:
    script = _object(stack_run, "ConfigMap", f"{db_bootstrap.APP}-script", ADMIN_NAMESPACE)
    assert script["data"] == {db_roles.SCRIPT_KEY: db_roles.render_script(_roles(stack_run))}
    data = _object(stack_run, "Secret", db_bootstrap.ADMIN_SECRET, ADMIN_NAMESPACE)["stringData"]
    assert set(data) == {db_roles.ADMIN_URL_ENV, *(r.env_var for r in _roles(stack_run))}
    master = urlsplit(data[db_roles.ADMIN_URL_ENV])
    assert (master.scheme, master.username, master.path) == ("postgresql", MASTER_USER, "/mlre")
    assert _query(data[db_roles.ADMIN_URL_ENV]) == {
        "sslmode": "verify-full",
        "sslrootcert": db_roles.RDS_CA_PATH,
    }
    # The roles' passwords reach the Job only as SCRAM verifiers.
    for role in _roles(stack_run):
        assert data[role.env_var] == db_roles.role_verifier(role, "p" * 32)


def test_job_name_is_a_hash_of_the_script_and_verifiers(stack_run: Run) -> None:
    roles = _roles(stack_run)
    verifiers = {r.name: db_roles.role_verifier(r, "p" * 32) for r in roles}
    expected = db_bootstrap.job_name(db_roles.render_script(roles), verifiers)
    assert _job(stack_run)["metadata"]["name"] == expected


def test_ca_bundle_is_in_every_namespace_with_a_database_client(stack_run: Run) -> None:
    for namespace in (ADMIN_NAMESPACE, PLATFORM, FLOWS):
        config_map = _object(stack_run, "ConfigMap", db_bootstrap.CA_CONFIG_MAP, namespace)
        assert config_map["data"] == {db_roles.RDS_CA_KEY: CA_PEM}


def test_only_the_admin_namespace_holds_the_master_user(stack_run: Run) -> None:
    holders = {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"])
        for m in manifests(stack_run)
        if MASTER_USER in str(m)
    }
    assert holders == {("Secret", ADMIN_NAMESPACE, db_bootstrap.ADMIN_SECRET)}


@pytest.mark.parametrize(("where", "role"), list(SERVICE_URLS.items()), ids=str)
def test_each_service_connects_as_its_own_role_with_verify_full(
    stack_run: Run, where: tuple[str, str, str], role: ServiceRole
) -> None:
    kind, name, key = where
    secret = _object(stack_run, kind, name)
    url = secret["stringData"][key]
    parts = urlsplit(url)
    assert (parts.username, parts.path) == (role.name, f"/{role.database}")
    assert _query(url) == {"sslmode": "verify-full", "sslrootcert": db_roles.RDS_CA_PATH}
    namespace = secret["metadata"]["namespace"]
    if name in POD_OF_SECRET:  # the CA file the URL names is mounted in that very pod
        deployment = _object(stack_run, "Deployment", POD_OF_SECRET[name], namespace)
        pod = deployment["spec"]["template"]["spec"]
        assert db_roles.RDS_CA_PATH in _ca_file_mounted(stack_run, pod, namespace)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations[db_bootstrap.ROLLOUT_ANNOTATION] == db_bootstrap.fingerprint(url)
    else:  # the flows' pods come from the work pools' job template: the CA is there to mount
        assert _object(stack_run, "ConfigMap", db_bootstrap.CA_CONFIG_MAP, namespace)


def test_mlflow_basic_auth_uses_the_mlflow_role(stack_run: Run) -> None:
    data = _object(stack_run, "Secret", "mlflow-secrets")["stringData"]
    assert f"database_uri = {data['MLFLOW_BACKEND_STORE_URI']}\n" in data["basic_auth.ini"]


def test_flows_get_the_registry_secret_by_name_only(stack_run: Run) -> None:
    assert stack_run.outputs["flows_db_secret"] == db_bootstrap.FLOWS_SECRET
    assert not any("postgresql" in str(value) for value in stack_run.outputs.values())


def test_service_deployments_wait_for_the_roles_job(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, pulumi.ResourceOptions | None] = {}

    class Recording(k8s.apps.v1.Deployment):
        def __init__(self, resource_name: str, *args: Any, **kwargs: Any) -> None:
            seen[resource_name] = kwargs.get("opts")
            super().__init__(resource_name, *args, **kwargs)

    monkeypatch.setattr(k8s.apps.v1, "Deployment", Recording)
    run_stack("dev")
    for service in ("mlflow", "feast", "serving"):
        (name,) = [n for n in seen if n == f"mlre-dev-{service}-deployment"]
        jobs = [d for d in seen[name].depends_on if isinstance(d, k8s.batch.v1.Job)]
        assert any(j._name == "mlre-dev-db-roles-job" for j in jobs), service


def test_master_credential_rule_passes_the_admin_namespace_only(stack_run: Run) -> None:
    (policy,) = [p for p in rules.POLICIES if p.name == "no-master-db-credential"]
    admin = _object(stack_run, "Secret", db_bootstrap.ADMIN_SECRET, ADMIN_NAMESPACE)
    assert MASTER_USER in admin["stringData"][db_roles.ADMIN_URL_ENV]
    assert not violations(policy, rules.SECRET_TYPE, admin)
    moved = {**admin, "metadata": {**admin["metadata"], "namespace": PLATFORM}}
    assert violations(policy, rules.SECRET_TYPE, moved)


def test_roles_job_reaches_postgres_and_nothing_else(stack_runs: dict[str, Run]) -> None:
    policies = [m for m in manifests(stack_runs["dev"]) if m["kind"] == "NetworkPolicy"]
    job = Pod(ADMIN_NAMESPACE, {"app.kubernetes.io/name": db_bootstrap.APP})
    in_vpc, s3 = "10.40.12.34", "52.216.0.10"
    assert allowed(policies, job, in_vpc, 5432)
    assert not allowed(policies, job, s3, 443)
    assert not allowed(policies, job, in_vpc, 6379)
    assert not allowed(policies, Pod(PLATFORM, {"app.kubernetes.io/name": "serving"}), job, 5432)


# --- config -----------------------------------------------------------------------------------


def test_missing_ca_bundle_names_the_key_and_the_fetch_command() -> None:
    with pytest.raises(InfraConfigError) as raised:
        run_stack("dev", {"mlre:rdsCaBundleFile": "infra/certs/does-not-exist.pem"})
    message = str(raised.value)
    assert "mlre:rdsCaBundleFile" in message
    assert "curl -fsSLo infra/certs/does-not-exist.pem " in message
    assert "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem" in message


def test_a_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    not_pem = tmp_path / "bundle.pem"
    not_pem.write_text("<html>404</html>")
    with pytest.raises(InfraConfigError, match=r"mlre:rdsCaBundleFile .* holds no PEM"):
        run_stack("dev", {"mlre:rdsCaBundleFile": str(not_pem)})
