"""A non-admin MLflow basic-auth user: generated password, and a one-shot Job that creates or
updates the user through MLflow's auth API (infra/mlflow_user_sync.py) as MLflow's admin.

The admin password reaches only that Job (a secretKeyRef to MLflow's own Secret) and MLflow;
the user's clients get the user's password alone. With `default_permission = READ` (MLflow's
auth_ini) a non-admin user reads every experiment and model but changes none it did not create.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import mlflow_user_sync as sync
from infra.k8s import (
    TMP,
    ClusterAccess,
    ScriptJob,
    app_labels,
    app_secret,
    script_job_spec,
    secret_env,
)

APP = "mlflow-user-sync"  # the Job pods' app label (network policies select it)
SCRIPT = Path(sync.__file__)
SCRIPT_DIR = "/opt/mlre"
UID = 1000  # as the MLflow Deployment runs the same image
TTL_S = 3600  # a finished Job (and its log) stays an hour
DEADLINE_S = 900  # MLflow's readiness wait (5 min) per try, a few tries
# Pulumi waits for the Job to complete (its clients depend on it): past the deadline, not 10 min.
AWAIT = pulumi.CustomTimeouts(create="20m", update="20m")


@dataclass(frozen=True)
class MlflowAdmin:
    """How a Job acts as MLflow's admin: in-cluster URL, image, the Secret with the password."""

    url: str
    image: str
    username: str
    secret_name: pulumi.Input[str]  # holds sync.ENV_ADMIN_PASSWORD


def job_name(username: str, password: str, script: str) -> str:
    """`mlflow-user-<user>-<hash>`: a new password or script is a new Job, so it runs again."""
    digest = hashlib.sha256(f"{username}\0{password}\0{script}".encode()).hexdigest()[:10]
    return f"mlflow-user-{username}-{digest}"


def sync_env(admin: MlflowAdmin, username: str, user_secret: pulumi.Input[str]) -> list[dict]:
    """The Job's environment: passwords only as secretKeyRefs."""
    return [
        {"name": sync.ENV_URL, "value": admin.url},
        {"name": sync.ENV_ADMIN_USERNAME, "value": admin.username},
        secret_env(sync.ENV_ADMIN_PASSWORD, admin.secret_name),
        {"name": sync.ENV_USERNAME, "value": username},
        secret_env(sync.ENV_PASSWORD, user_secret),
        {"name": "HOME", "value": TMP},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def sync_job_spec(
    image: str, env: list[dict], script_config_map: pulumi.Input[str]
) -> dict[str, object]:
    """JobSpec: one try per pod, a few pods (it calls MLflow only)."""
    job = ScriptJob(
        app=APP,
        uid=UID,
        image=image,
        command=["python", f"{SCRIPT_DIR}/{SCRIPT.name}"],
        env=env,
        script_config_map=script_config_map,
        script_dir=SCRIPT_DIR,
        memory="128Mi",
        backoff_limit=3,
        deadline_s=DEADLINE_S,
        ttl_s=TTL_S,
    )
    return script_job_spec(job, "sync")


class MlflowUser(pulumi.ComponentResource):
    """RandomPassword, its Secret, the sync script's ConfigMap and the Job that applies them.
    `password` is for the user's clients; make them depend on `job` (the user exists then)."""

    def __init__(
        self,
        name: str,
        *,
        username: str,
        namespace: str,
        admin: MlflowAdmin,
        access: ClusterAccess,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:MlflowUser", name, None, opts)
        k8s_opts = access.child_opts(self)
        self.username = username
        generated = random.RandomPassword(
            f"{name}-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        self.password: pulumi.Output[str] = generated.result
        app = f"mlflow-user-{username}"
        user_secret = app_secret(
            name,
            app=app,
            namespace=namespace,
            string_data={sync.ENV_PASSWORD: self.password},
            opts=k8s_opts,
        )
        script_text = SCRIPT.read_text()
        script = k8s.core.v1.ConfigMap(
            f"{name}-script",
            metadata={"name": f"{app}-sync", "namespace": namespace},
            data={SCRIPT.name: script_text},
            opts=k8s_opts,
        )
        # Only a 10-hex-digit hash of the password is in the name: the name need not be secret.
        name_of_job = pulumi.Output.unsecret(
            self.password.apply(lambda pw: job_name(username, pw, script_text))
        )
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata={
                "name": name_of_job,
                "namespace": namespace,
                "labels": app_labels(APP),
                # A failed Job is replaced on the next `pulumi up`, not waited on again. One the
                # TTL removed comes back after a `pulumi refresh`: harmless, the sync is idempotent.
                "annotations": {"pulumi.com/replaceUnready": "true"},
            },
            spec=sync_job_spec(
                admin.image,
                sync_env(admin, username, user_secret),
                script.metadata.apply(lambda m: m["name"]),
            ),
            opts=pulumi.ResourceOptions.merge(
                k8s_opts, pulumi.ResourceOptions(custom_timeouts=AWAIT)
            ),
        )
        self.register_outputs({"username": username, "job": self.job.metadata})
