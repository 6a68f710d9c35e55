"""Each component, asserted like a policy on what the mocks saw, on both stacks."""

from __future__ import annotations

import json
import runpy

import pytest

from infra.iam import document, s3_access_statements
from infra.node_pools import gpu_node_template_tags
from infra.policy.iam_allowlist import UNSCOPABLE_READ_ACTIONS
from mlre import k8s_labels
from tests.infra.infra_harness import PUBLIC_EXPOSURE, ROOT, Run, run_mocked, run_stack

pytestmark = pytest.mark.infra

OUTPUTS = {
    "mlflow_url",
    "feast_feature_server_url",
    "mlflow_artifacts_bucket",
    "feature_lake_bucket",
    "feast_registry_bucket",
    "prediction_log_bucket",
    "redis_endpoint",
    "work_pools",
    "kubeconfig",
    "cluster_name",
}


def _gpu_groups(run: Run) -> list[dict]:
    return [
        r.inputs
        for r in run.of_type("aws:eks/nodeGroup:NodeGroup")
        if r.inputs.get("amiType") == "AL2023_x86_64_NVIDIA"
    ]


def test_components_use_mlre_type_tokens(stack_run: Run) -> None:
    tokens = {r.typ for r in stack_run.resources if r.typ.startswith("mlre:infra:")}
    for part in ("Network", "Cluster", "CpuNodePool", "GpuNodePool", "ClusterAddons", "Storage",
                 "SecureBucket", "Database", "Cache", "MlflowService", "FeastService",
                 "PrefectWorkers", "Monitoring", "AlertRelay", "CostGuard"):  # fmt: skip
        assert f"mlre:infra:{part}" in tokens


def test_network_spans_azs_with_private_and_public_subnets(stack_run: Run) -> None:
    subnets = stack_run.of_type("aws:ec2/subnet:Subnet")
    public = [s.inputs for s in subnets if "kubernetes.io/role/elb" in s.inputs["tags"]]
    private = [s.inputs for s in subnets if "kubernetes.io/role/internal-elb" in s.inputs["tags"]]
    assert len(public) == len(private) >= 2
    assert len({s["availabilityZone"] for s in private}) == len(private)
    for subnet in public + private:
        assert subnet["tags"]["kubernetes.io/cluster/" + f"mlre-{_stack(stack_run)}"] == "shared"
        assert not subnet.get("mapPublicIpOnLaunch")


def _stack(run: Run) -> str:
    return run.of_type("aws:eks/cluster:Cluster")[0].inputs["name"].removeprefix("mlre-")


def test_nat_gateways_one_in_dev_one_per_az_in_prod(stack_runs: dict[str, Run]) -> None:
    assert len(stack_runs["dev"].of_type("aws:ec2/natGateway:NatGateway")) == 1
    assert len(stack_runs["prod"].of_type("aws:ec2/natGateway:NatGateway")) == 3


def test_cluster_is_logged_encrypted_and_not_open(stack_run: Run) -> None:
    (cluster,) = stack_run.of_type("aws:eks/cluster:Cluster")
    props = cluster.inputs
    assert props["version"] == "1.33"
    assert set(props["enabledClusterLogTypes"]) == {
        "api", "audit", "authenticator", "controllerManager", "scheduler"
    }  # fmt: skip
    assert props["encryptionConfig"]["resources"] == ["secrets"]
    assert props["vpcConfig"]["endpointPrivateAccess"] is True
    cidrs = props["vpcConfig"].get("publicAccessCidrs") or []
    assert props["vpcConfig"]["endpointPublicAccess"] is bool(cidrs)
    assert "0.0.0.0/0" not in cidrs
    (key,) = [k for k in stack_run.of_type("aws:kms/key:Key") if "secrets" in k.name]
    assert key.inputs["enableKeyRotation"] is True
    assert stack_run.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")


def test_prod_api_server_is_private_only(stack_runs: dict[str, Run]) -> None:
    (cluster,) = stack_runs["prod"].of_type("aws:eks/cluster:Cluster")
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False


def test_gpu_pools_are_tainted_labelled_and_scale_from_zero(stack_run: Run) -> None:
    groups = _gpu_groups(stack_run)
    assert groups
    for group in groups:
        assert group["labels"] == {k8s_labels.POOL_LABEL_KEY: k8s_labels.GPU_POOL_LABEL_VALUE}
        assert group["taints"] == [
            {"key": k8s_labels.GPU_TAINT_KEY, "value": k8s_labels.GPU_TAINT_VALUE,
             "effect": "NO_SCHEDULE"}
        ]  # fmt: skip
        assert group["scalingConfig"]["minSize"] == 0
        assert group["scalingConfig"]["maxSize"] >= 1
        assert all(t.startswith(("g5", "g6", "p4d", "p5")) for t in group["instanceTypes"])


def test_dev_gpus_are_spot_prod_gpus_on_demand(stack_runs: dict[str, Run]) -> None:
    assert {g["capacityType"] for g in _gpu_groups(stack_runs["dev"])} == {"SPOT"}
    assert {g["capacityType"] for g in _gpu_groups(stack_runs["prod"])} == {"ON_DEMAND"}
    assert len(_gpu_groups(stack_runs["prod"])) == 2


def test_gpu_asgs_carry_scale_from_zero_node_template_tags(stack_run: Run) -> None:
    tags = {(t.inputs["tag"]["key"], t.inputs["tag"]["value"])
            for t in stack_run.of_type("aws:autoscaling/tag:Tag")}  # fmt: skip
    for key, value in gpu_node_template_tags(1).items():
        if not key.endswith(k8s_labels.GPU_RESOURCE):
            assert (key, value) in tags
    assert (
        gpu_node_template_tags(4)[
            f"k8s.io/cluster-autoscaler/node-template/resources/{k8s_labels.GPU_RESOURCE}"
        ]
        == "4"
    )


def test_launch_templates_require_imdsv2_and_encrypt_ebs(stack_run: Run) -> None:
    templates = stack_run.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    assert len(templates) == 1 + len(_gpu_groups(stack_run))
    for lt in templates:
        md = lt.inputs["metadataOptions"]
        assert md["httpTokens"] == "required"
        assert md["httpPutResponseHopLimit"] == 1
        assert all(m["ebs"]["encrypted"] == "true" for m in lt.inputs["blockDeviceMappings"])


def test_node_groups_use_launch_templates_and_let_autoscaler_own_size(stack_run: Run) -> None:
    for group in stack_run.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert group.inputs["launchTemplate"]["id"]
        assert "diskSize" not in group.inputs  # must live in the launch template


def test_gpu_daemonsets_tolerate_taint_and_select_gpu_nodes(stack_run: Run) -> None:
    releases = {r.inputs["chart"]: r.inputs for r in
                stack_run.of_type("kubernetes:helm.sh/v3:Release")}  # fmt: skip
    assert set(releases) == {"cluster-autoscaler", "nvidia-device-plugin", "dcgm-exporter",
                             "kube-prometheus-stack", "prometheus-pushgateway",
                             "dask-kubernetes-operator"}  # fmt: skip
    for chart in ("nvidia-device-plugin", "dcgm-exporter"):
        values = releases[chart]["values"]
        assert values["tolerations"] == [k8s_labels.gpu_toleration()]
        assert values["nodeSelector"] == k8s_labels.gpu_node_selector()
    autoscaler = releases["cluster-autoscaler"]["values"]
    assert autoscaler["autoDiscovery"]["clusterName"] == f"mlre-{_stack(stack_run)}"
    assert autoscaler["rbac"]["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]


def test_every_bucket_is_encrypted_private_versioned_and_tls_only(stack_run: Run) -> None:
    buckets = stack_run.of_type("aws:s3/bucket:Bucket")
    assert len(buckets) == 5
    for bucket in buckets:
        name = bucket.name
        sse = stack_run.named(f"{name}-sse").inputs["rules"][0]
        assert sse["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
        pab = stack_run.named(f"{name}-public-access").inputs
        switches = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                    "restrictPublicBuckets")  # fmt: skip
        assert all(pab[k] is True for k in switches)
        assert stack_run.named(f"{name}-versioning").inputs["versioningConfiguration"] == {
            "status": "Enabled"
        }
        owner = stack_run.named(f"{name}-ownership").inputs["rule"]["objectOwnership"]
        assert owner == "BucketOwnerEnforced"
        policy = json.loads(stack_run.named(f"{name}-tls-only").inputs["policy"])
        (deny,) = policy["Statement"]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        rule = stack_run.named(f"{name}-lifecycle").inputs["rules"][0]
        assert rule["noncurrentVersionExpiration"]["noncurrentDays"] >= 1


def test_database_is_private_encrypted_and_backed_up(stack_run: Run) -> None:
    (db,) = stack_run.of_type("aws:rds/instance:Instance")
    props = db.inputs
    assert props["publiclyAccessible"] is False
    assert props["storageEncrypted"] is True
    assert props["backupRetentionPeriod"] >= 1
    assert props["password"] == "p" * 32  # from RandomPassword, not config
    (sg,) = [s for s in stack_run.of_type("aws:ec2/securityGroup:SecurityGroup") if "db" in s.name]
    (rule,) = sg.inputs["ingress"]
    assert rule["securityGroups"] == ["sg-cluster"]
    assert "cidrBlocks" not in rule


def test_prod_database_is_multi_az_and_protected(stack_runs: dict[str, Run]) -> None:
    (prod,) = stack_runs["prod"].of_type("aws:rds/instance:Instance")
    (dev,) = stack_runs["dev"].of_type("aws:rds/instance:Instance")
    assert prod.inputs["multiAz"] is True
    assert prod.inputs["deletionProtection"] is True
    assert prod.inputs["skipFinalSnapshot"] is False
    assert dev.inputs["multiAz"] is False


def test_redis_is_encrypted_with_auth(stack_run: Run) -> None:
    (redis,) = stack_run.of_type("aws:elasticache/replicationGroup:ReplicationGroup")
    props = redis.inputs
    assert props["atRestEncryptionEnabled"] is True
    assert props["transitEncryptionEnabled"] is True
    assert len(props["authToken"]) >= 32


def test_irsa_roles_trust_one_service_account_each(stack_run: Run) -> None:
    subjects = []
    for role in stack_run.of_type("aws:iam/role:Role"):
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
        if "Federated" in trust["Principal"]:
            (sub,) = [
                v for k, v in trust["Condition"]["StringEquals"].items() if k.endswith(":sub")
            ]
            subjects.append(sub)
    assert sorted(subjects) == sorted([
        "system:serviceaccount:kube-system:cluster-autoscaler",
        "system:serviceaccount:kube-system:ebs-csi-controller-sa",
        "system:serviceaccount:mlre-platform:mlflow",
        "system:serviceaccount:mlre-platform:feast",
        "system:serviceaccount:mlre-platform:serving",
        f"system:serviceaccount:{k8s_labels.FLOWS_NAMESPACE}:{k8s_labels.FLOWS_SERVICE_ACCOUNT}",
    ])  # fmt: skip


def test_irsa_policies_have_no_wildcard_actions_or_resources(stack_run: Run) -> None:
    for rp in stack_run.of_type("aws:iam/rolePolicy:RolePolicy"):
        for statement in json.loads(rp.inputs["policy"])["Statement"]:
            actions = statement["Action"]
            assert not any("*" in a for a in actions), rp.name
            if statement["Resource"] == "*":
                # Only the autoscaler's unscopable Describe calls may do this.
                assert "cluster-autoscaler" in rp.name
                assert set(actions) <= UNSCOPABLE_READ_ACTIONS
            else:
                assert "*" not in statement["Resource"]


def test_app_roles_never_touch_resource_star(stack_run: Run) -> None:
    for rp in stack_run.of_type("aws:iam/rolePolicy:RolePolicy"):
        if "cluster-autoscaler" not in rp.name:
            assert '"*"' not in rp.inputs["policy"], rp.name


def test_s3_statements_list_bucket_and_object_arns() -> None:
    doc = json.loads(document(s3_access_statements(["arn:aws:s3:::b"], "arn:k", write=False)))
    bucket, objects, kms = doc["Statement"]
    assert bucket["Resource"] == ["arn:aws:s3:::b"]
    assert objects["Resource"] == ["arn:aws:s3:::b/*"]
    assert "s3:PutObject" not in objects["Action"]
    assert kms["Resource"] == ["arn:k"]


def test_budget_alarm_emails_configured_address(stack_run: Run) -> None:
    (budget,) = stack_run.of_type("aws:budgets/budget:Budget")
    assert budget.inputs["timeUnit"] == "MONTHLY"
    for notification in budget.inputs["notifications"]:
        assert notification["subscriberEmailAddresses"] == ["platform-alerts@example.com"]


def test_outputs_the_flows_need_are_present(stack_run: Run) -> None:
    assert set(stack_run.outputs) >= OUTPUTS
    assert stack_run.outputs["work_pools"] == [k8s_labels.CPU_WORK_POOL, k8s_labels.GPU_WORK_POOL]
    assert stack_run.outputs["mlflow_url"] == "http://mlflow.mlre-platform.svc.cluster.local"
    kubeconfig = json.loads(stack_run.outputs["kubeconfig"])
    assert kubeconfig["users"][0]["user"]["exec"]["command"] == "aws"
    assert stack_run.outputs["redis_endpoint"].startswith("master.")


def test_public_exposure_only_behind_the_flag() -> None:
    run = run_stack("dev", PUBLIC_EXPOSURE)
    types = {r.inputs["metadata"]["name"]: r.inputs["spec"]["type"]
             for r in run.of_type("kubernetes:core/v1:Service")}  # fmt: skip
    # The prediction service and the relay have no authentication of their own: never public.
    # The Prefect server (dev) keeps its private Service for the workers next to its public one.
    assert types == {"mlflow": "LoadBalancer", "feast": "LoadBalancer", "serving": "ClusterIP",
                     "alert-relay": "ClusterIP", "prefect-server": "ClusterIP",
                     "prefect-server-public": "LoadBalancer"}  # fmt: skip
    assert run.outputs["mlflow_url"] == "https://mlflow.ml.example.com"


def test_services_are_cluster_ip_by_default(stack_run: Run) -> None:
    for service in stack_run.of_type("kubernetes:core/v1:Service"):
        assert service.inputs["spec"]["type"] == "ClusterIP"


def test_entrypoint_exports_the_stack_outputs() -> None:
    from pulumi.runtime import settings

    run_mocked(lambda: runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__"))
    root = settings.get_root_resource()
    assert set(root.outputs) >= OUTPUTS
