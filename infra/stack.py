"""Composition of the whole environment: wires components together, holds no logic of its own."""

from __future__ import annotations

import pulumi

from infra.addons import ClusterAddons
from infra.alert_relay import AlertRelay
from infra.budget import CostGuard
from infra.cache import Cache
from infra.cluster import Cluster
from infra.config import StackConfig
from infra.dask_operator import NAMESPACE as DASK_OPERATOR_NAMESPACE
from infra.dask_operator import DaskOperator
from infra.database import Database
from infra.db_bootstrap import DatabaseRoles
from infra.db_roles import ADMIN_NAMESPACE, FEAST, FEAST_READER, MLFLOW, PREFECT, stack_roles
from infra.feast_service import FeastCaller, FeastService, FeatureStoreAccess
from infra.k8s import ClusterAccess, in_cluster_url, namespace
from infra.mlflow_service import APP as MLFLOW_APP
from infra.mlflow_service import MlflowService
from infra.monitoring import Monitoring
from infra.monitoring_assets import MonitoringAssets
from infra.network import DataPlacement, Network
from infra.network_policies import Layout, NetworkPolicies
from infra.node_pools import CpuNodePool, GpuNodePool, NodeTarget
from infra.prefect_server import PrefectServer
from infra.prefect_worker import API_KEY_ENTRY, PrefectClient, PrefectWorkers
from infra.serving_service import APP as SERVING_APP
from infra.serving_service import ServingService
from infra.storage import Storage
from mlre import k8s_labels


def build(cfg: StackConfig) -> dict[str, pulumi.Input[object]]:
    """Create every component for one stack and return the stack outputs the flows need."""
    p = cfg.prefix
    net = Network(f"{p}-network", cfg.network, cluster_name=p)
    cluster = Cluster(p, cfg.cluster, region=cfg.region, subnet_ids=net.private_subnet_ids)
    nodes = NodeTarget(cluster.name, cluster.node_role.arn, net.private_subnet_ids)
    system = CpuNodePool(
        f"{p}-system-pool",
        nodes,
        instance_types=cfg.cluster.system_instance_types,
        min_size=cfg.cluster.system_min_size,
        max_size=cfg.cluster.system_max_size,
        volume_gb=cfg.cluster.system_volume_gb,
    )
    gpu_pools = [
        GpuNodePool(f"{p}-gpu-{pool.name}", pool, nodes, volume_gb=cfg.cluster.gpu_volume_gb)
        for pool in cfg.cluster.gpu_pools
    ]
    provider = cluster.k8s_provider
    access = ClusterAccess(
        provider=provider,
        oidc_provider_arn=cluster.oidc_provider.arn,
        oidc_issuer_url=cluster.oidc_issuer_url,
    )
    addons = ClusterAddons(
        f"{p}-addons",
        cluster_name=cluster.name,
        region=cfg.region,
        kubernetes_version=cfg.cluster.kubernetes_version,
        access=access,
        asg_names=[system.asg_name] + [pool.asg_name for pool in gpu_pools],
        node_group_arns=[system.node_group.arn] + [pool.node_group.arn for pool in gpu_pools],
        chart_versions={
            "cluster-autoscaler": cfg.cluster.cluster_autoscaler_chart_version,
            "nvidia-device-plugin": cfg.cluster.nvidia_device_plugin_chart_version,
            "dcgm-exporter": cfg.cluster.dcgm_exporter_chart_version,
        },
        opts=pulumi.ResourceOptions(depends_on=[system]),
    )
    storage = Storage(f"{p}-storage", cfg.data)
    data_at = DataPlacement(net.vpc_id, net.private_subnet_ids, cluster.security_group_id)
    db = Database(f"{p}-db", cfg.data, data_at, roles=stack_roles(cfg.services.prefect_server))
    cache = Cache(f"{p}-redis", cfg.data, data_at)

    svc = cfg.services
    platform_ns = namespace(svc.platform_namespace, provider, cluster)
    flows_ns = namespace(k8s_labels.FLOWS_NAMESPACE, provider, cluster, level="baseline")
    after_ns = pulumi.ResourceOptions(depends_on=[platform_ns, system])
    irsa = {"access": access, "kms_key_arn": storage.kms_key.arn}
    # What MLflow, Feast and the prediction service share: their namespace and IRSA.
    platform = {
        "namespace": svc.platform_namespace,
        "opts": after_ns,
        **irsa,
    }
    buckets = storage.buckets
    # The services' database roles, made by a Job that alone holds the master credential.
    db_admin_ns = namespace(ADMIN_NAMESPACE, provider, cluster)
    roles = DatabaseRoles(
        f"{p}-db-roles",
        database=db,
        ca_bundle=cfg.data.rds_ca_bundle,
        image=cfg.data.postgres_client_image,
        client_namespaces=[svc.platform_namespace],
        flows_namespace=k8s_labels.FLOWS_NAMESPACE,
        access=access,
        opts=pulumi.ResourceOptions(depends_on=[db_admin_ns, platform_ns, flows_ns, system]),
    )
    # The feature server and the prediction service read the same Redis and lake; each reaches
    # the SQL registry as its own role.
    store = FeatureStoreAccess(
        region=cfg.region,
        lake_bucket=buckets["feature-lake"].name,
        readable_bucket_arns=[buckets["feature-lake"].arn, buckets["feast-registry"].arn],
        redis_connection=cache.feast_connection(),
    )
    mlflow = MlflowService(
        f"{p}-mlflow",
        image=svc.mlflow_image,
        replicas=svc.mlflow_replicas,
        artifact_bucket=buckets["mlflow-artifacts"].name,
        artifact_bucket_arn=buckets["mlflow-artifacts"].arn,
        database=roles.access(MLFLOW.name, "psycopg2", svc.platform_namespace),
        public=svc.public,
        **platform,
    )
    feast = FeastService(
        f"{p}-feast",
        image=svc.feast_image,
        project=svc.feast_project,
        min_replicas=svc.feast_min_replicas,
        max_replicas=svc.feast_max_replicas,
        store=store,
        registry=roles.access(FEAST.name, "psycopg", svc.platform_namespace),
        # Feast roles by service account: the flows write, the prediction service reads.
        callers=[
            FeastCaller(
                k8s_labels.FEAST_WRITER_ROLE,
                k8s_labels.FLOWS_NAMESPACE,
                k8s_labels.FLOWS_SERVICE_ACCOUNT,
            ),
            FeastCaller(k8s_labels.FEAST_READER_ROLE, svc.platform_namespace, SERVING_APP),
        ],
        public=svc.public,
        **platform,
    )
    serving = ServingService(
        f"{p}-serving",
        image=svc.serving_image,
        min_replicas=svc.serving_min_replicas,
        max_replicas=svc.serving_max_replicas,
        cpu_target=svc.serving_cpu_target,
        cpu_request=svc.serving_cpu_request,
        memory=svc.serving_memory,
        store=store,
        registry=roles.access(FEAST_READER.name, "psycopg", svc.platform_namespace),
        # In-cluster even when MLflow is public: model downloads stay off the load balancer.
        mlflow_uri=in_cluster_url(MLFLOW_APP, svc.platform_namespace),
        mlflow_admin=mlflow.admin,
        prediction_log_bucket_arn=buckets["prediction-log"].arn,
        **platform,
    )
    # The Prefect API the workers, flow runs and the relay use: the stack's own server, or the
    # one the user brings (mlre:prefectApiUrl + mlre:prefectApiKey).
    prefect_server: PrefectServer | None = None
    if svc.prefect_api is None:
        prefect_server = PrefectServer(
            f"{p}-prefect-server",
            image=svc.prefect_image,
            namespace=svc.platform_namespace,
            database=roles.access(PREFECT.name, "asyncpg", svc.platform_namespace),
            public=svc.public,
            access=access,
            opts=after_ns,
        )
        prefect = prefect_server.client
    else:
        prefect = PrefectClient(svc.prefect_api.url, API_KEY_ENTRY, svc.prefect_api.key)
    workers = PrefectWorkers(
        f"{p}-prefect",
        image=svc.prefect_image,
        api=prefect,
        data_bucket_arns=[
            buckets[purpose].arn
            for purpose in ("feature-lake", "feast-registry", "prediction-log", "flow-results")
        ],
        results_bucket=buckets["flow-results"].name,
        opts=pulumi.ResourceOptions(depends_on=[flows_ns, system]),
        **irsa,
    )
    # Flow runs scale out on Dask clusters the operator starts in the flows namespace.
    dask_ns = namespace(DASK_OPERATOR_NAMESPACE, provider, cluster)
    dask = DaskOperator(
        f"{p}-dask",
        cfg.dask,
        image=svc.serving_image,  # the flows image: workers run the flows' own code
        access=access,
        opts=pulumi.ResourceOptions(depends_on=[dask_ns, flows_ns, system]),
    )
    mon = cfg.monitoring
    monitoring_ns = namespace(mon.namespace, provider, cluster, level="baseline")
    # Next to Alertmanager: the token Secret the relay reads is the one Alertmanager mounts.
    relay = AlertRelay(
        f"{p}-alert-relay",
        namespace=mon.namespace,
        image=svc.serving_image,
        prefect=prefect,
        access=access,
        opts=pulumi.ResourceOptions(depends_on=[monitoring_ns, system]),
    )
    monitoring = Monitoring(
        f"{p}-monitoring",
        mon,
        assets=MonitoringAssets.load(),
        access=access,
        storage_class=addons.storage_class,
        cluster_label=p,
        scrape_targets=[serving.metrics, addons.gpu_metrics, relay.metrics],
        alert_relay=relay.receiver,
        opts=pulumi.ResourceOptions(depends_on=[monitoring_ns, system, addons]),
    )
    layout = Layout(
        platform_namespace=svc.platform_namespace,
        flows_namespace=k8s_labels.FLOWS_NAMESPACE,
        monitoring_namespace=mon.namespace,
        vpc_cidr=cfg.network.vpc_cidr,
        db_admin_namespace=ADMIN_NAMESPACE,
        dask_operator_namespace=DASK_OPERATOR_NAMESPACE,
        public_cidrs=svc.public.source_cidrs if svc.public else (),
        prefect_server=svc.prefect_server,
    )
    NetworkPolicies(
        f"{p}-network-policies",
        layout,
        access=access,
        opts=pulumi.ResourceOptions(
            depends_on=[platform_ns, flows_ns, monitoring_ns, db_admin_ns, dask_ns]
        ),
    )
    CostGuard(f"{p}-cost", cfg.budget)
    return {
        "cluster_name": cluster.name,
        "kubeconfig": cluster.kubeconfig,
        "region": cfg.region,
        "vpc_id": net.vpc_id,
        "mlflow_url": mlflow.url,
        "feast_feature_server_url": feast.url,
        "serving_url": serving.url,
        "serving_role_arn": serving.role.arn,
        "mlflow_artifacts_bucket": buckets["mlflow-artifacts"].name,
        "feature_lake_bucket": buckets["feature-lake"].name,
        "feast_registry_bucket": buckets["feast-registry"].name,
        "prediction_log_bucket": buckets["prediction-log"].name,
        # MLRE_RESULTS_URI of flow runs (the ConfigMap `flows-results` gives it to every pod).
        "results_uri": workers.results_uri,
        # MLRE_PREDICTION_LOG_URI for flow runs (batch inference writes, drift/monitoring read).
        "prediction_log_uri": serving.prediction_log_uri,
        "redis_endpoint": cache.endpoint,
        "database_endpoint": db.address,
        # The Secret in flows_namespace holding the flows' Feast registry URL (the `feast` role);
        # the work pools' job templates envFrom it and mount the ConfigMap `rds-ca` there.
        "flows_db_secret": roles.flows_secret_name,
        "work_pools": workers.work_pools,
        # The Prefect API the workers and flow runs use (in-cluster with mlre:prefectServer).
        "prefect_api_url": prefect.url,
        # With mlre:prefectServer: the UI's URL and where its login is (never the value).
        **(prefect_server.outputs() if prefect_server else {}),
        "cpu_work_pool": k8s_labels.CPU_WORK_POOL,
        "gpu_work_pool": k8s_labels.GPU_WORK_POOL,
        "flows_namespace": k8s_labels.FLOWS_NAMESPACE,
        "flows_service_account": k8s_labels.FLOWS_SERVICE_ACCOUNT,
        "flows_role_arn": workers.flows_role.arn,
        "mlflow_admin_password": pulumi.Output.secret(mlflow.admin_password.result),
        "gpu_node_pools": [pool.name for pool in cfg.cluster.gpu_pools],
        # In-cluster monitoring endpoints. The batch flows push their SLIs to pushgateway_url:
        # give it to flow runs via job_variables.env (the work-pool templates are generated
        # before the stack exists, like prediction_log_uri). prometheus_url is what the canary
        # and `mlre slo status` query.
        "pushgateway_url": monitoring.pushgateway_url,
        "prometheus_url": monitoring.prometheus_url,
        "alertmanager_url": monitoring.alertmanager_url,
        "grafana_url": monitoring.grafana_url,
        # Where Alertmanager posts page and ticket alerts (POST /alerts, bearer token).
        "alert_relay_url": relay.url,
        "grafana_admin_password": pulumi.Output.secret(monitoring.grafana_password.result),
        # The Dask worker defaults as MLRE_* variables (for job_variables.env); the ConfigMap
        # `flows-dask` in flows_namespace holds the same, for the job templates to envFrom.
        "dask_settings": dask.settings,
    }
