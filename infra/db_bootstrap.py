"""DatabaseRoles: the one-shot Job that creates the services' PostgreSQL roles and databases as
the RDS master user (the script is infra/db_roles.py's), the `rds-ca` ConfigMaps every database
client mounts, and what each service gets: its own role's URL (`DatabaseAccess`).

The master URL lives in one Secret, in the db-admin namespace, read by the Job alone; the roles'
passwords reach that Secret only as SCRAM verifiers. The Job's name is a hash of the script and
the verifiers, so `pulumi up` re-runs it exactly when one of them changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import db_roles
from infra.database import Database
from infra.k8s import (
    TMP,
    ClusterAccess,
    ConfigVolume,
    ScriptJob,
    app_labels,
    script_job_spec,
    secret_env,
)
from mlre import k8s_labels

APP = "db-roles"  # the Job pods' app label (network policies select it)
CA_CONFIG_MAP = k8s_labels.RDS_CA_CONFIG_MAP
ADMIN_SECRET = "db-admin"
FLOWS_SECRET = k8s_labels.FLOWS_DB_SECRET  # the flows' registry URL (feast apply, materialize)
FLOWS_REGISTRY_KEY = "MLRE_REGISTRY_URI"  # mlre.settings' variable: envFrom works as is
SCRIPT_DIR = "/etc/db-roles"
UID = 70  # the `postgres` user of the official alpine image
TTL_S = 3600  # a finished Job (and its log) stays an hour
DEADLINE_S = 600
# Pulumi waits for the Job to complete (the services' Deployments depend on it).
AWAIT = pulumi.CustomTimeouts(create="15m", update="15m")
ROLLOUT_ANNOTATION = "mlre.io/db-credentials"  # changes with the role's URL: pods roll on rotation


def job_name(script: str, verifiers: Mapping[str, str]) -> str:
    """`db-roles-<hash>`: a new script or password is a new Job, so it runs again."""
    material = "\0".join([script, *(f"{k}={v}" for k, v in sorted(verifiers.items()))])
    return f"{APP}-{hashlib.sha256(material.encode()).hexdigest()[:10]}"


def fingerprint(url: str) -> str:
    """A short hash of a credential: safe in an annotation, changes when it does."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def ca_volume(config_map: pulumi.Input[str]) -> ConfigVolume:
    """The RDS CA bundle, read-only at db_roles.RDS_CA_DIR (the URLs' sslrootcert)."""
    return ConfigVolume("rds-ca", db_roles.RDS_CA_DIR, {"config_map": {"name": config_map}})


def job_env(secret_name: pulumi.Input[str], roles: Sequence[db_roles.ServiceRole]) -> list[dict]:
    """Master URL and verifiers only as secretKeyRefs; TLS settings libpq also applies to
    every `\\connect` of the script."""
    return [
        secret_env(db_roles.ADMIN_URL_ENV, secret_name),
        *(secret_env(role.env_var, secret_name) for role in roles),
        {"name": "PGSSLMODE", "value": "verify-full"},
        {"name": "PGSSLROOTCERT", "value": db_roles.RDS_CA_PATH},
        {"name": "PGCONNECT_TIMEOUT", "value": "10"},
        {"name": "HOME", "value": TMP},
    ]


def job_spec(
    image: str,
    env: list[dict],
    script_config_map: pulumi.Input[str],
    ca: ConfigVolume,
    roles: Sequence[db_roles.ServiceRole],
) -> dict[str, object]:
    """JobSpec: psql once per pod, a few pods (it talks to RDS only)."""
    job = ScriptJob(
        app=APP,
        uid=UID,
        image=image,
        command=db_roles.job_argv(roles, f"{SCRIPT_DIR}/{db_roles.SCRIPT_KEY}"),
        env=env,
        script_config_map=script_config_map,
        script_dir=SCRIPT_DIR,
        memory="64Mi",
        backoff_limit=4,
        deadline_s=DEADLINE_S,
        ttl_s=TTL_S,
        config_volumes=[ca],
    )
    return script_job_spec(job, "psql")


@dataclass(frozen=True)
class DatabaseAccess:
    """How one service's pods reach PostgreSQL: its own role's URL (secret), the CA bundle
    volume that URL's sslrootcert points into, and the Job its pods must start after."""

    url: pulumi.Output[str]
    ca_volume: ConfigVolume
    ready: pulumi.Resource

    def pod_annotations(self) -> dict[str, pulumi.Output[str]]:
        """Pod-template annotation that rolls the Deployment when the credential rotates."""
        return {ROLLOUT_ANNOTATION: pulumi.Output.unsecret(self.url.apply(fingerprint))}


class DatabaseRoles(pulumi.ComponentResource):
    """CA ConfigMaps, the master's Secret, the script's ConfigMap and the Job that runs it,
    and the flows' registry Secret. `access(...)` hands a service its own connection."""

    def __init__(
        self,
        name: str,
        *,
        database: Database,
        ca_bundle: str,
        image: str,
        client_namespaces: Sequence[str],
        flows_namespace: str,
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:DatabaseRoles", name, None, opts)
        k8s_opts = access.child_opts(self)
        self.database = database
        admin_ns = db_roles.ADMIN_NAMESPACE
        self.ca_volumes = {
            ns: ca_volume(
                k8s.core.v1.ConfigMap(
                    f"{name}-{ns}-ca",
                    metadata={"name": CA_CONFIG_MAP, "namespace": ns},
                    data={db_roles.RDS_CA_KEY: ca_bundle},
                    opts=k8s_opts,
                ).metadata.apply(lambda m: m["name"])
            )
            for ns in dict.fromkeys([admin_ns, *client_namespaces, flows_namespace])
        }
        verifiers = database.role_verifiers()
        secret = k8s.core.v1.Secret(
            f"{name}-admin-secret",
            metadata={"name": ADMIN_SECRET, "namespace": admin_ns},
            string_data=pulumi.Output.all(database.admin_url(), verifiers).apply(
                lambda a: {
                    db_roles.ADMIN_URL_ENV: a[0],
                    **{db_roles.role_named(n, database.roles).env_var: v for n, v in a[1].items()},
                }
            ),
            opts=k8s_opts,
        )
        script_text = db_roles.render_script(database.roles)
        script = k8s.core.v1.ConfigMap(
            f"{name}-script",
            metadata={"name": f"{APP}-script", "namespace": admin_ns},
            data={db_roles.SCRIPT_KEY: script_text},
            opts=k8s_opts,
        )
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata={
                # Only a 10-hex-digit hash of the verifiers is in the name: it need not be secret.
                "name": pulumi.Output.unsecret(verifiers.apply(lambda v: job_name(script_text, v))),
                "namespace": admin_ns,
                "labels": app_labels(APP),
                # A failed Job is replaced on the next `pulumi up`, not waited on again. One the
                # TTL removed comes back after a `pulumi refresh`: harmless, the script is
                # idempotent.
                "annotations": {"pulumi.com/replaceUnready": "true"},
            },
            spec=job_spec(
                image,
                job_env(secret.metadata.apply(lambda m: m["name"]), database.roles),
                script.metadata.apply(lambda m: m["name"]),
                self.ca_volumes[admin_ns],
                database.roles,
            ),
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(custom_timeouts=AWAIT)
            ),
        )
        flows = self.access(db_roles.FEAST.name, "psycopg", flows_namespace)
        flows_secret = k8s.core.v1.Secret(
            f"{name}-flows-secret",
            metadata={"name": FLOWS_SECRET, "namespace": flows_namespace},
            string_data={FLOWS_REGISTRY_KEY: flows.url},
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(depends_on=[self.job])
            ),
        )
        self.flows_secret_name: pulumi.Output[str] = flows_secret.metadata.apply(
            lambda m: m["name"]
        )
        self.register_outputs({"job": self.job.metadata, "flows_secret": self.flows_secret_name})

    def access(self, role: str, driver: str, namespace: str) -> DatabaseAccess:
        """`role`'s connection for pods in `namespace` (one of the client namespaces)."""
        return DatabaseAccess(
            url=self.database.url_for(role, driver),
            ca_volume=self.ca_volumes[namespace],
            ready=self.job,
        )
