"""One typed settings object, read from `MLRE_*` environment variables once.

Everything the platform writes at run time (databases, artifacts, the parquet lake, logs, PID files,
Prefect's home, temp files) lives under `Settings.home`, a git-ignored folder (`.mlre/` by default).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlre import k8s_labels

PROJECT_ROOT = Path(__file__).resolve().parents[1]

StoreProfile = Literal["local", "production"]
TaskRunnerKind = Literal["in-process", "dask-local", "dask-scheduler", "dask-kubernetes"]
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
MIN_FLOW_HEARTBEAT_S = 30  # Prefect refuses a shorter heartbeat period


# ESTIMATES: us-east-1 on-demand Linux list prices (USD per hour) of the instance types the
# Pulumi stacks' node pools use (Pulumi.*.yaml). Not a bill: no spot, savings plans or EBS.
ESTIMATED_HOURLY_USD: dict[str, float] = {
    "t3.large": 0.0832,
    "t3.xlarge": 0.1664,
    "m6i.large": 0.096,
    "m6i.xlarge": 0.192,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g6.12xlarge": 4.6016,
}


class Settings(BaseSettings):
    """Platform settings. Override any field with `MLRE_<FIELD>` (e.g. `MLRE_PREFECT_PORT=4300`)."""

    model_config = SettingsConfigDict(env_prefix="MLRE_", extra="ignore")

    home: Path = Field(PROJECT_ROOT / ".mlre", description="Folder holding all runtime state.")
    feature_repo: Path = Field(PROJECT_ROOT / "feature_repo", description="Feast repository.")
    store_profile: StoreProfile = Field("local", description="Feast store profile to use.")

    host: str = Field("127.0.0.1", description="Interface local servers bind to.")
    prefect_port: int = 4200
    mlflow_port: int = 5000
    mlflow_uri: str = Field("", description="Remote MLflow tracking URI (default: the local one).")
    model_name: str = Field("fraud-detector", description="Registered model the flows manage.")
    health_timeout_s: float = Field(60.0, description="How long `mlre up` waits for health.")
    stop_timeout_s: float = Field(15.0, description="SIGTERM grace period before SIGKILL.")
    flow_heartbeat_s: int = Field(
        30,
        ge=MIN_FLOW_HEARTBEAT_S,
        description="Seconds between flow-run heartbeats; the zombie automation crashes a run "
        "that misses three (flows.automations).",
    )

    # Production profile endpoints: the ${MLRE_*} values of feature_store.production.yaml
    # (mlre.features.store.profile_values renders the profile from them).
    redis_connection_string: str = Field("", description="Feast Redis online store, host:port,...")
    registry_uri: str = Field("", description="Feast SQL registry (postgresql+psycopg://...).")
    offline_uri: str = Field("", description="Offline lake root (s3://bucket/prefix in the cloud).")
    prediction_log_uri: str = Field(
        "",
        description="Root the prediction log lives under: s3://bucket/prefix in the cloud, where "
        "every writer (service, batch inference) and reader (drift, monitoring, canary) must "
        "see it; pyarrow URI options may follow (?region=eu-west-1). Default: the local lake.",
    )

    # Monitoring: Prometheus, Alertmanager and the Pushgateway (mlre.monitoring_config). The
    # *_url fields point at remote servers (the cloud's); empty means the local ones `mlre up`
    # starts, and nothing at all when `monitoring` is off. Read the *_endpoint properties.
    monitoring: bool = Field(
        True, description="Whether `mlre up` starts Prometheus, Alertmanager and the Pushgateway."
    )
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    pushgateway_port: int = 9091
    relay_port: int = Field(9096, description="The alert relay (python -m relay) listens here.")
    prometheus_url: str = Field("", description="Remote Prometheus (default: the local one).")
    alertmanager_url: str = Field("", description="Remote Alertmanager (default: the local one).")
    pushgateway_url: str = Field(
        "", description="Pushgateway the flows push their SLIs to (default: the local one)."
    )
    alert_webhook_url: str = Field(
        "",
        description="Where the local Alertmanager posts page and ticket alerts (empty: the "
        "local alert relay when `alert_relay` is on, else dropped).",
    )
    alert_relay: bool = Field(
        True,
        description="Whether `mlre up` starts the alert relay next to the monitoring stack "
        "(python -m relay: alerts -> Prefect events -> remediation automations).",
    )

    # Where a flow run landed (the work pools' job templates set these on every pod) and what
    # that node costs: training records device, wall time and an estimated cost per run.
    node_name: str = Field("", description="Kubernetes node of this pod (downward API).")
    work_pool: str = Field("", description="Prefect work pool this flow run was sent to.")
    instance_type: str = Field(
        "", description="EC2 instance type of the node (empty: unknown, no cost estimate)."
    )
    instance_hourly_usd: dict[str, float] = Field(
        default_factory=lambda: dict(ESTIMATED_HOURLY_USD),
        description="Hourly price per instance type: ESTIMATES (us-east-1 on-demand list "
        "prices, no savings plans or spot discounts); override with MLRE_INSTANCE_HOURLY_USD "
        'as JSON, e.g. {"g5.xlarge": 0.42} for spot.',
    )

    # The task runner of the partitioned work (materialization and batch-inference partitions):
    # checked and turned into runner options by mlre.task_runners, built by flows/runners.py.
    task_runner: TaskRunnerKind = Field(
        "in-process",
        description="Where partition tasks run: in-process (Prefect's thread pool), dask-local "
        "(a LocalCluster of worker processes per run), dask-scheduler (an existing Dask "
        "scheduler) or dask-kubernetes (a DaskCluster per run, Dask Kubernetes operator).",
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Dask worker processes or pods.")
    dask_worker_memory_mb: int = Field(
        2048,
        ge=256,
        description="Memory limit per Dask worker (one partition at a time each); the nanny "
        "restarts a worker that goes past it.",
    )
    dask_worker_cpu: float = Field(1.0, gt=0, description="CPU request of a Dask worker pod.")
    dask_scheduler_address: str = Field(
        "", description="Existing scheduler for task_runner=dask-scheduler (tcp://host:8786)."
    )
    dask_image: str = Field(
        "", description="Worker image for task_runner=dask-kubernetes (the flows' own image)."
    )
    dask_namespace: str = Field(
        k8s_labels.FLOWS_NAMESPACE, description="Namespace of the per-run DaskCluster."
    )
    dask_service_account: str = Field(
        k8s_labels.FLOWS_SERVICE_ACCOUNT,
        description="Service account of the DaskCluster's pods (the flows' IRSA account).",
    )
    dask_worker_pool: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="Node pool of the Dask worker pods; gpu adds the GPU taint's toleration "
        "and one GPU per worker.",
    )

    # Where resumable tasks persist their results (flows/resume.py): a retried flow run reads
    # what its earlier attempts finished from here instead of doing it again.
    results_uri: str = Field(
        "",
        description="Root of the flows' persisted task results: s3://bucket/prefix in the cloud "
        "(a flow pod's disk is lost with the pod). Default: <home>/results.",
    )

    # The error-budget policy (mlre.slo.policy) of promote-model and canary-rollout.
    budget_policy_fail_closed: bool = Field(
        False,
        description="Refuse promote-model and canary-rollout when the error budgets cannot be "
        "read (no Prometheus, no data); default: allow them and say so (fail-open).",
    )

    @property
    def lake_dir(self) -> Path:
        """Root of the local parquet lake (sources and prediction logs)."""
        return self.home / "lake"

    @property
    def lake_uri(self) -> str:
        """Root of the offline lake the feature sources live under: `offline_uri` (s3://... in
        the cloud) when set, else the local lake."""
        return self.offline_uri or str(self.lake_dir)

    @property
    def prediction_log_root(self) -> Path | str:
        """Lake root of the prediction log (`<root>/predictions/<model>/`): URI or local lake."""
        return self.prediction_log_uri or self.lake_dir

    @property
    def results_root(self) -> str:
        """Root of the persisted task results: `results_uri`, else `<home>/results`."""
        return self.results_uri or str(self.home / "results")

    @property
    def data_dir(self) -> Path:
        """Feast registry and online store for the local profile."""
        return self.home / "feast"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """PID files of the background processes `mlre up` started."""
        return self.home / "run"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def monitoring_dir(self) -> Path:
        """Generated Prometheus/Alertmanager configs and the three servers' data."""
        return self.home / "monitoring"

    def _monitoring_endpoint(self, remote: str, port: int) -> str:
        """The remote URL, else the local server's (or "" when monitoring is off)."""
        if remote:
            return remote.rstrip("/")
        return f"http://{self.host}:{port}" if self.monitoring else ""

    @property
    def prometheus_endpoint(self) -> str:
        """Prometheus' base URL ("" when none is configured)."""
        return self._monitoring_endpoint(self.prometheus_url, self.prometheus_port)

    @property
    def alertmanager_endpoint(self) -> str:
        """Alertmanager's base URL ("" when none is configured)."""
        return self._monitoring_endpoint(self.alertmanager_url, self.alertmanager_port)

    @property
    def pushgateway_endpoint(self) -> str:
        """The Pushgateway's base URL; "" when none is configured (the flows push nothing)."""
        return self._monitoring_endpoint(self.pushgateway_url, self.pushgateway_port)

    def runtime_env(self) -> dict[str, str]:
        """Environment every platform process needs: state under `home`, telemetry off."""
        return {
            "MLRE_HOME": str(self.home),
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "FEAST_USAGE": "False",
            "TMPDIR": str(self.tmp_dir),
            "MPLCONFIGDIR": str(self.home / "matplotlib"),
            "XDG_RUNTIME_DIR": str(self.tmp_dir),
            "XDG_CACHE_HOME": str(self.home / "cache"),
            # MLflow writes an installation id to $XDG_CONFIG_HOME/mlflow (default ~/.config).
            "XDG_CONFIG_HOME": str(self.home / "config"),
            # No MLFLOW_ALLOW_PICKLE_DESERIALIZATION: the platform loads its models with skops
            # against its own allow-list (mlre.model_files), never through MLflow's unpickler.
            **self.flow_run_env(),
        }

    def flow_run_env(self) -> dict[str, str]:
        """What a process running flows needs for zombie detection: its heartbeat period."""
        return {HEARTBEAT_ENV: str(self.flow_heartbeat_s)}

    def client_env(self) -> dict[str, str]:
        """`runtime_env` plus the URLs clients use to reach the local servers."""
        return {
            **self.runtime_env(),
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
        }

    def ensure_dirs(self) -> None:
        """Create the runtime folders (called by commands, never on import)."""
        for path in (
            self.home,
            self.lake_dir,
            self.data_dir,
            self.logs_dir,
            self.run_dir,
            self.tmp_dir,
            self.prefect_home,
            self.mlflow_dir,
            self.monitoring_dir,
            self.home / "matplotlib",
        ):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


def apply_runtime_env(settings: Settings, *, with_clients: bool = True) -> None:
    """Export the runtime environment into this process (CLI entry points and test sessions)."""
    settings.ensure_dirs()
    env = settings.client_env() if with_clients else settings.runtime_env()
    os.environ.update(env)
