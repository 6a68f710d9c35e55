"""Typed, read-once view of the stack's Pulumi config (defaults live only in Pulumi.yaml)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import pulumi

from mlre import k8s_labels

CAPACITY_TYPES = ("ON_DEMAND", "SPOT")
REPO_ROOT = Path(__file__).resolve().parent.parent  # relative file keys are relative to this
RDS_CA_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"


class InfraConfigError(ValueError):
    """A config value a user set is unusable; the message names the key and the fix."""


@dataclass(frozen=True)
class GpuPoolConfig:
    """One GPU managed node group: scales from 0 up to max_size (the cost cap)."""

    name: str
    instance_types: tuple[str, ...]
    capacity_type: str
    max_size: int
    gpus_per_node: int


@dataclass(frozen=True)
class NetworkConfig:
    """VPC layout: one private and one public subnet per availability zone."""

    vpc_cidr: str
    az_count: int
    private_subnet_cidrs: tuple[str, ...]
    public_subnet_cidrs: tuple[str, ...]
    single_nat_gateway: bool


@dataclass(frozen=True)
class ClusterConfig:
    """EKS control plane and node pools."""

    kubernetes_version: str
    public_access_cidrs: tuple[str, ...]
    system_instance_types: tuple[str, ...]
    system_min_size: int
    system_max_size: int
    system_volume_gb: int
    gpu_volume_gb: int
    gpu_pools: tuple[GpuPoolConfig, ...]
    cluster_autoscaler_chart_version: str
    nvidia_device_plugin_chart_version: str
    dcgm_exporter_chart_version: str


@dataclass(frozen=True)
class DataConfig:
    """Buckets, PostgreSQL and Redis."""

    noncurrent_version_days: int
    prediction_log_days: int
    flow_results_days: int
    db_instance_class: str
    db_engine_version: str
    db_allocated_storage_gb: int
    db_backup_retention_days: int
    db_multi_az: bool
    db_deletion_protection: bool
    redis_node_type: str
    redis_engine_version: str
    redis_num_cache_clusters: int
    rds_ca_bundle: str  # PEM text of mlre:rdsCaBundleFile: clients verify RDS against it
    postgres_client_image: str  # psql of the one-shot roles Job


@dataclass(frozen=True)
class PublicExposure:
    """MLflow and Feast behind internet-facing load balancers: TLS only, from listed CIDRs."""

    domain: str  # MLflow answers at mlflow.<domain>, Feast at feast.<domain>
    certificate_arn: str  # an ACM certificate covering both names
    source_cidrs: tuple[str, ...]

    def hostname(self, app: str) -> str:
        """The public DNS name of one app."""
        return f"{app}.{self.domain}"


@dataclass(frozen=True)
class PrefectApi:
    """A Prefect API the user brings (mlre:prefectServer off): Prefect Cloud or their own server."""

    url: str
    key: pulumi.Output[str]


@dataclass(frozen=True)
class ServicesConfig:
    """Workloads on the cluster and how they are reached."""

    platform_namespace: str
    public: PublicExposure | None  # None: ClusterIP only (VPN / port-forward)
    mlflow_image: str
    mlflow_replicas: int
    feast_image: str
    feast_project: str
    feast_min_replicas: int
    feast_max_replicas: int
    serving_image: str
    serving_min_replicas: int
    serving_max_replicas: int
    serving_cpu_target: int
    serving_cpu_request: str
    serving_memory: str
    prefect_image: str  # the workers' image; the in-cluster server runs it too
    prefect_api: PrefectApi | None  # None: the stack runs its own Prefect server

    @property
    def prefect_server(self) -> bool:
        """Whether the stack runs the in-cluster Prefect server (mlre:prefectServer)."""
        return self.prefect_api is None


@dataclass(frozen=True)
class MonitoringConfig:
    """Prometheus, Alertmanager, Grafana and the Pushgateway; where alerts go."""

    namespace: str
    stack_chart_version: str
    pushgateway_chart_version: str
    retention: str
    storage_gb: int
    prometheus_cpu_request: str
    prometheus_memory: str
    replicas: int
    page_webhook_url: pulumi.Output[str]
    ticket_webhook_url: pulumi.Output[str]


@dataclass(frozen=True)
class DaskConfig:
    """The Dask operator's chart and the worker pods a flow run's KubeCluster asks it for."""

    operator_chart_version: str
    worker_cpu: float  # cores per worker
    worker_memory_mb: int  # MiB per worker: the pod's request and limit, Dask's memory limit
    max_workers: int
    worker_pool: str  # the `mlre.io/pool` value the workers run on: "cpu" or "gpu"


@dataclass(frozen=True)
class BudgetConfig:
    """Monthly cost alarm."""

    monthly_limit_usd: int
    alert_email: str


@dataclass(frozen=True)
class StackConfig:
    """Everything the program reads from config, read once."""

    stack: str
    region: str
    network: NetworkConfig
    cluster: ClusterConfig
    data: DataConfig
    services: ServicesConfig
    monitoring: MonitoringConfig
    budget: BudgetConfig
    dask: DaskConfig

    @property
    def prefix(self) -> str:
        """Name prefix shared by every physical resource of this stack."""
        return f"mlre-{self.stack}"


def parse_gpu_pool(spec: str) -> GpuPoolConfig:
    """Parse `name=a10g;instances=g5.xlarge,g5.2xlarge;capacity=SPOT;max=2;gpus=1`."""
    try:
        fields = dict(part.split("=", 1) for part in spec.split(";") if part.strip())
        pool = GpuPoolConfig(
            name=fields["name"].strip(),
            instance_types=tuple(t.strip() for t in fields["instances"].split(",") if t.strip()),
            capacity_type=fields["capacity"].strip().upper(),
            max_size=int(fields["max"]),
            gpus_per_node=int(fields["gpus"]),
        )
    except (KeyError, ValueError) as exc:
        raise InfraConfigError(
            f"mlre:gpuPools entry {spec!r} is malformed ({exc}); expected "
            "'name=<pool>;instances=<type>[,<type>];capacity=ON_DEMAND|SPOT;max=<n>;gpus=<n>'"
        ) from exc
    if pool.capacity_type not in CAPACITY_TYPES:
        raise InfraConfigError(
            f"mlre:gpuPools entry {spec!r}: capacity must be one of {CAPACITY_TYPES}"
        )
    if not pool.instance_types or pool.max_size < 1 or pool.gpus_per_node < 1:
        raise InfraConfigError(
            f"mlre:gpuPools entry {spec!r}: needs at least one instance type, max >= 1, gpus >= 1"
        )
    return pool


def _cidr(value: str, key: str) -> str:
    """Reject a malformed CIDR early (before AWS does, slowly)."""
    try:
        ipaddress.ip_network(value)
    except ValueError as exc:
        raise InfraConfigError(f"mlre:{key} holds {value!r}, not a CIDR block") from exc
    return value


def _cidrs(cfg: pulumi.Config, key: str) -> tuple[str, ...]:
    """Read a list of CIDRs."""
    return tuple(_cidr(value, key) for value in cfg.require_object(key))


def _network(cfg: pulumi.Config) -> NetworkConfig:
    """Network section; every AZ needs one private and one public subnet CIDR."""
    az_count = cfg.require_int("azCount")
    private, public = _cidrs(cfg, "privateSubnetCidrs"), _cidrs(cfg, "publicSubnetCidrs")
    if az_count < 2:
        raise InfraConfigError("mlre:azCount must be >= 2: EKS and RDS need two AZs")
    if len(private) < az_count or len(public) < az_count:
        raise InfraConfigError(
            f"mlre:privateSubnetCidrs and mlre:publicSubnetCidrs need {az_count} entries each "
            "(one per AZ); add CIDRs or lower mlre:azCount"
        )
    return NetworkConfig(
        vpc_cidr=_cidr(cfg.require("vpcCidr"), "vpcCidr"),
        az_count=az_count,
        private_subnet_cidrs=private[:az_count],
        public_subnet_cidrs=public[:az_count],
        single_nat_gateway=cfg.require_bool("singleNatGateway"),
    )


def _cluster(cfg: pulumi.Config) -> ClusterConfig:
    """Cluster section; an open public endpoint is refused outright."""
    public_cidrs = _cidrs(cfg, "clusterPublicAccessCidrs")
    if any(ipaddress.ip_network(c).prefixlen == 0 for c in public_cidrs):
        raise InfraConfigError(
            "mlre:clusterPublicAccessCidrs must not contain 0.0.0.0/0; list your VPN/office CIDRs"
        )
    pools = tuple(parse_gpu_pool(spec) for spec in cfg.require_object("gpuPools"))
    if len({p.name for p in pools}) != len(pools):
        raise InfraConfigError("mlre:gpuPools has duplicate pool names")
    return ClusterConfig(
        kubernetes_version=cfg.require("kubernetesVersion"),
        public_access_cidrs=public_cidrs,
        system_instance_types=tuple(cfg.require_object("systemInstanceTypes")),
        system_min_size=cfg.require_int("systemMinSize"),
        system_max_size=cfg.require_int("systemMaxSize"),
        system_volume_gb=cfg.require_int("systemVolumeGb"),
        gpu_volume_gb=cfg.require_int("gpuVolumeGb"),
        gpu_pools=pools,
        cluster_autoscaler_chart_version=cfg.require("clusterAutoscalerChartVersion"),
        nvidia_device_plugin_chart_version=cfg.require("nvidiaDevicePluginChartVersion"),
        dcgm_exporter_chart_version=cfg.require("dcgmExporterChartVersion"),
    )


def _data(cfg: pulumi.Config) -> DataConfig:
    """Storage, database and cache section."""
    return DataConfig(
        noncurrent_version_days=cfg.require_int("noncurrentVersionDays"),
        prediction_log_days=cfg.require_int("predictionLogDays"),
        flow_results_days=cfg.require_int("flowResultsDays"),
        db_instance_class=cfg.require("dbInstanceClass"),
        db_engine_version=cfg.require("dbEngineVersion"),
        db_allocated_storage_gb=cfg.require_int("dbAllocatedStorageGb"),
        db_backup_retention_days=cfg.require_int("dbBackupRetentionDays"),
        db_multi_az=cfg.require_bool("dbMultiAz"),
        db_deletion_protection=cfg.require_bool("dbDeletionProtection"),
        redis_node_type=cfg.require("redisNodeType"),
        redis_engine_version=cfg.require("redisEngineVersion"),
        redis_num_cache_clusters=cfg.require_int("redisNumCacheClusters"),
        rds_ca_bundle=_rds_ca_bundle(cfg.require("rdsCaBundleFile")),
        postgres_client_image=pinned_image(
            cfg.require("postgresClientImage"), "postgresClientImage"
        ),
    )


def _rds_ca_bundle(file: str) -> str:
    """The RDS CA bundle's PEM text, read at program time (relative paths: from the repo)."""
    path = Path(file) if Path(file).is_absolute() else REPO_ROOT / file
    fetch = f"curl -fsSLo {file} {RDS_CA_URL}"
    if not path.is_file():
        raise InfraConfigError(
            f"mlre:rdsCaBundleFile is {file!r}, which does not exist; fetch the RDS CA bundle "
            f"with `{fetch}` (or point the key at your copy)"
        )
    text = path.read_text()
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise InfraConfigError(
            f"mlre:rdsCaBundleFile {file!r} holds no PEM certificate; fetch it with `{fetch}`"
        )
    return text


# A Kubernetes CPU quantity: cores ("2", "1.5") or millicores ("500m").
_CPU_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m?)")


def cpu_cores(quantity: str, key: str) -> float:
    """A Kubernetes CPU quantity in cores; InfraConfigError naming `key` if it is not one."""
    match = _CPU_QUANTITY.fullmatch(quantity.strip())
    if match is None or float(match[1]) == 0:
        raise InfraConfigError(
            f"mlre:{key} is {quantity!r}; use a Kubernetes CPU quantity such as 500m or 2"
        )
    return float(match[1]) / (1000 if match[2] else 1)


def _cpu_request(cfg: pulumi.Config, key: str) -> str:
    """The quantity as written (Kubernetes reads it), checked now rather than at apply time."""
    value = cfg.require(key)
    cpu_cores(value, key)
    return value


def _serving_bounds(cfg: pulumi.Config) -> tuple[int, int, int]:
    """HPA floor, ceiling and CPU target of the prediction service, checked against each other."""
    low, high = cfg.require_int("servingReplicasMin"), cfg.require_int("servingReplicasMax")
    target = cfg.require_int("servingCpuTarget")
    if low < 2:
        raise InfraConfigError(
            "mlre:servingReplicasMin must be >= 2: with one replica the PodDisruptionBudget "
            "(minAvailable 1) blocks every node drain and scale-down"
        )
    if high < low:
        raise InfraConfigError(
            f"mlre:servingReplicasMax ({high}) is below mlre:servingReplicasMin ({low})"
        )
    if not 1 <= target <= 100:
        raise InfraConfigError(f"mlre:servingCpuTarget is {target}; use a percentage 1-100")
    return low, high, target


_ACM_ARN = re.compile(r"arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _public_exposure(cfg: pulumi.Config) -> PublicExposure | None:
    """The public-exposure keys, checked together: no plain HTTP, no open source range."""
    if not cfg.require_bool("exposeServicesPublicly"):
        return None
    domain, certificate_arn = cfg.require("publicDomain"), cfg.require("publicCertificateArn")
    cidrs = _cidrs(cfg, "publicSourceCidrs")
    if not _DOMAIN.fullmatch(domain):
        raise InfraConfigError(
            f"mlre:exposeServicesPublicly is on but mlre:publicDomain is {domain!r}; set the DNS "
            "domain MLflow and Feast are published under (mlflow.<domain>, feast.<domain>)"
        )
    if not _ACM_ARN.fullmatch(certificate_arn):
        raise InfraConfigError(
            f"mlre:exposeServicesPublicly is on but mlre:publicCertificateArn is "
            f"{certificate_arn!r}; the load balancers terminate TLS only: request an ACM "
            f"certificate for mlflow.{domain} and feast.{domain} (and prefect.{domain} with "
            "mlre:prefectServer) and set its ARN"
        )
    if not cidrs or any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs):
        raise InfraConfigError(
            "mlre:exposeServicesPublicly is on: list the client CIDRs that may reach the load "
            "balancers in mlre:publicSourceCidrs (never 0.0.0.0/0)"
        )
    return PublicExposure(domain, certificate_arn, cidrs)


# Docker's reference grammar, narrowed to what we deploy: `[registry[:port]/]path:tag`, then the
# digest that makes it immutable (a tag can be re-pushed; the digest names the exact bytes).
_IMAGE_NAME = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::\d+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_IMAGE_TAG = re.compile(r"\w[\w.-]{0,127}")
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _image_problem(value: str) -> str | None:
    """Why `value` is not `repository:tag@sha256:<64 hex>` (None when it is)."""
    reference, _, digest = value.partition("@")
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:  # the only ':' is a registry port, or there is none
        name, tag = reference, ""
    if not _IMAGE_NAME.fullmatch(name):
        return f"{name!r} is not an image repository"
    if not _IMAGE_TAG.fullmatch(tag):
        return "it has no tag (keep the tag, for humans reading the config)"
    if not digest:
        return "it is not pinned by digest (a tag can be re-pushed)"
    if not _IMAGE_DIGEST.fullmatch(digest):
        return f"its digest {digest!r} is not sha256: followed by 64 lowercase hex digits"
    return None


def pinned_image(value: str, key: str) -> str:
    """An image reference pinned by digest with its tag kept: `repo:tag@sha256:<64 hex>`."""
    problem = _image_problem(value)
    if problem:
        tagged = value.partition("@")[0] or "<image>:<tag>"
        raise InfraConfigError(
            f"mlre:{key} is {value!r}: {problem}. Set it as <repository>:<tag>@sha256:<digest>; "
            f"get the digest with `docker buildx imagetools inspect {tagged}` or "
            f"`crane digest {tagged}`"
        )
    return value


def _services(cfg: pulumi.Config) -> ServicesConfig:
    """Kubernetes services section; the Prefect API key is only ever a secret."""
    serving_min, serving_max, serving_cpu_target = _serving_bounds(cfg)
    return ServicesConfig(
        platform_namespace=cfg.require("platformNamespace"),
        public=_public_exposure(cfg),
        mlflow_image=pinned_image(cfg.require("mlflowImage"), "mlflowImage"),
        mlflow_replicas=cfg.require_int("mlflowReplicas"),
        feast_image=pinned_image(cfg.require("feastImage"), "feastImage"),
        feast_project=cfg.require("feastProject"),
        feast_min_replicas=cfg.require_int("feastMinReplicas"),
        feast_max_replicas=cfg.require_int("feastMaxReplicas"),
        serving_image=pinned_image(cfg.require("servingImage"), "servingImage"),
        serving_min_replicas=serving_min,
        serving_max_replicas=serving_max,
        serving_cpu_target=serving_cpu_target,
        serving_cpu_request=_cpu_request(cfg, "servingCpuRequest"),
        serving_memory=cfg.require("servingMemory"),
        prefect_image=pinned_image(cfg.require("prefectImage"), "prefectImage"),
        prefect_api=_prefect_api(cfg),
    )


def prefect_api_problem(server: bool, url: str) -> str | None:
    """Why mlre:prefectServer and mlre:prefectApiUrl do not fit together (None when they do)."""
    if server and url:
        return (
            f"mlre:prefectServer is on, so the workers use the in-cluster server, but "
            f"mlre:prefectApiUrl is {url!r}: unset it (`pulumi config rm mlre:prefectApiUrl`) "
            "or turn mlre:prefectServer off to use that API"
        )
    if not server and not url.startswith(("https://", "http://")):
        return (
            f"mlre:prefectServer is off, so mlre:prefectApiUrl must be the Prefect API the "
            f"workers use (a Prefect Cloud workspace URL or your server's .../api), not {url!r}; "
            "or turn mlre:prefectServer on to run one in the cluster"
        )
    return None


def _prefect_api(cfg: pulumi.Config) -> PrefectApi | None:
    """The user's Prefect API and key, or None when the stack runs its own server (then the
    key is not read: the in-cluster server authenticates with a generated auth string)."""
    server, url = cfg.require_bool("prefectServer"), cfg.require("prefectApiUrl")
    problem = prefect_api_problem(server, url)
    if problem:
        raise InfraConfigError(problem)
    return None if server else PrefectApi(url, cfg.require_secret("prefectApiKey"))


# A Prometheus duration: one or more <number><unit> pairs, e.g. 31d or 1w3d.
_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def _monitoring(cfg: pulumi.Config) -> MonitoringConfig:
    """Monitoring section; the receivers' webhook URLs are only ever secrets."""
    retention = cfg.require("prometheusRetention")
    if not _DURATION.fullmatch(retention):
        raise InfraConfigError(
            f"mlre:prometheusRetention is {retention!r}; use a Prometheus duration such as 31d"
        )
    storage_gb = cfg.require_int("prometheusStorageGb")
    replicas = cfg.require_int("monitoringReplicas")
    if storage_gb < 10:
        raise InfraConfigError(
            f"mlre:prometheusStorageGb is {storage_gb}; use at least 10 (GiB per replica)"
        )
    if replicas < 1:
        raise InfraConfigError(f"mlre:monitoringReplicas is {replicas}; use 1 or more")
    return MonitoringConfig(
        namespace=cfg.require("monitoringNamespace"),
        stack_chart_version=cfg.require("kubePrometheusStackChartVersion"),
        pushgateway_chart_version=cfg.require("pushgatewayChartVersion"),
        retention=retention,
        storage_gb=storage_gb,
        prometheus_cpu_request=cfg.require("prometheusCpuRequest"),
        prometheus_memory=cfg.require("prometheusMemory"),
        replicas=replicas,
        page_webhook_url=cfg.require_secret("alertPageWebhookUrl"),
        ticket_webhook_url=cfg.require_secret("alertTicketWebhookUrl"),
    )


DASK_WORKER_POOLS = (k8s_labels.CPU_POOL_LABEL_VALUE, k8s_labels.GPU_POOL_LABEL_VALUE)
DASK_MIN_WORKER_MB = 256  # the flows' settings refuse less (MLRE_DASK_WORKER_MEMORY_MB)


def _dask(cfg: pulumi.Config) -> DaskConfig:
    """Dask section; GPU workers need a GPU pool to land on."""
    workers, pool = cfg.require_int("daskMaxWorkers"), cfg.require("daskWorkerPool")
    memory_mb = cfg.require_int("daskWorkerMemoryMb")
    if workers < 1:
        raise InfraConfigError(f"mlre:daskMaxWorkers is {workers}; use 1 or more")
    if memory_mb < DASK_MIN_WORKER_MB:
        raise InfraConfigError(
            f"mlre:daskWorkerMemoryMb is {memory_mb}; use at least {DASK_MIN_WORKER_MB} (MiB)"
        )
    if pool not in DASK_WORKER_POOLS:
        raise InfraConfigError(
            f"mlre:daskWorkerPool is {pool!r}; use one of {', '.join(DASK_WORKER_POOLS)}"
        )
    if pool == k8s_labels.GPU_POOL_LABEL_VALUE and not cfg.require_object("gpuPools"):
        raise InfraConfigError(
            "mlre:daskWorkerPool is gpu but mlre:gpuPools is empty; add a GPU pool or use cpu"
        )
    return DaskConfig(
        operator_chart_version=cfg.require("daskOperatorChartVersion"),
        worker_cpu=cpu_cores(cfg.require("daskWorkerCpu"), "daskWorkerCpu"),
        worker_memory_mb=memory_mb,
        max_workers=workers,
        worker_pool=pool,
    )


def load_config() -> StackConfig:
    """Read the whole stack config once into a frozen, validated object."""
    cfg = pulumi.Config()
    return StackConfig(
        stack=pulumi.get_stack(),
        region=pulumi.Config("aws").require("region"),
        network=_network(cfg),
        cluster=_cluster(cfg),
        data=_data(cfg),
        services=_services(cfg),
        monitoring=_monitoring(cfg),
        budget=BudgetConfig(
            monthly_limit_usd=cfg.require_int("monthlyBudgetUsd"),
            alert_email=cfg.require("budgetAlertEmail"),
        ),
        dask=_dask(cfg),
    )
