"""Cluster add-ons: cluster-autoscaler (GPU scale-from-zero), NVIDIA device plugin, DCGM exporter,
and the EBS CSI driver with an encrypted gp3 StorageClass (volumes for Prometheus & co.).

Autoscaler choice: cluster-autoscaler over Karpenter. Our GPU capacity is a few fixed, cost-capped
managed node groups (max size = budget); cluster-autoscaler scales exactly those groups, reads the
ASG node-template tags to scale from zero, and needs no extra CRDs, controller nodes or
interruption queue. Karpenter's strength (picking any instance type on the fly) is what we want
to forbid for cost control.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam
from infra.k8s import IRSA_ANNOTATION, ClusterAccess, ScrapeTarget, cpu_pool_selector
from mlre import k8s_labels

AUTOSCALER_NAMESPACE = "kube-system"
AUTOSCALER_SA = "cluster-autoscaler"
# The EKS-managed EBS CSI driver's controller account; its IRSA role gets AWS's managed policy
# (kept current by AWS as the driver gains calls; its volume actions are tag-conditioned).
EBS_CSI_SA = "ebs-csi-controller-sa"
EBS_CSI_POLICY = "service-role/AmazonEBSCSIDriverPolicy"
STORAGE_CLASS = "gp3-encrypted"
# vpc-cni add-on settings: the node agent enforces NetworkPolicies (infra/network_policies.py).
VPC_CNI_CONFIG = {"enableNetworkPolicy": "true"}
# The DCGM exporter's Service (release = chart name, so fullname = "dcgm-exporter"): the
# monitoring component's ServiceMonitor selects it by these.
DCGM_SERVICE_LABELS = {
    "app.kubernetes.io/name": "dcgm-exporter",
    "app.kubernetes.io/instance": "dcgm-exporter",
}
DCGM_PORT_NAME = "metrics"
# Each add-on's Helm repository; stack.py pins the chart versions from config.
CHART_REPOS = {
    "cluster-autoscaler": "https://kubernetes.github.io/autoscaler",
    "nvidia-device-plugin": "https://nvidia.github.io/k8s-device-plugin",
    "dcgm-exporter": "https://nvidia.github.io/dcgm-exporter/helm-charts",
}


def gpu_node_affinity() -> dict:
    """Required node affinity on the GPU pool label.

    Replaces the device plugin chart's default affinity, which expects NFD/GFD labels that
    EKS nodes do not have.
    """
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": k8s_labels.POOL_LABEL_KEY,
                                "operator": "In",
                                "values": [k8s_labels.GPU_POOL_LABEL_VALUE],
                            }
                        ]
                    }
                ]
            }
        }
    }


def gpu_daemon_values() -> dict:
    """Helm values shared by GPU daemonsets: run on GPU nodes only, tolerate their taint."""
    return {
        "nodeSelector": k8s_labels.gpu_node_selector(),
        "affinity": gpu_node_affinity(),
        "tolerations": [k8s_labels.gpu_toleration()],
    }


def autoscaler_values(
    cluster_name: str, region: str, role_arn: str, kubernetes_version: str
) -> dict:
    """cluster-autoscaler values: auto-discover our node groups, run on the CPU pool."""
    return {
        "cloudProvider": "aws",
        "awsRegion": region,
        "autoDiscovery": {"clusterName": cluster_name},
        # The autoscaler's minor version must match the cluster's.
        "image": {"tag": f"v{kubernetes_version}.0"},
        "rbac": {
            "serviceAccount": {
                "create": True,
                "name": AUTOSCALER_SA,
                "annotations": {IRSA_ANNOTATION: role_arn},
            }
        },
        "extraArgs": {
            "balance-similar-node-groups": True,
            "skip-nodes-with-system-pods": False,
            "expander": "least-waste",
            "scale-down-unneeded-time": "10m",
        },
        "nodeSelector": cpu_pool_selector(),
    }


class ClusterAddons(pulumi.ComponentResource):
    """Helm releases that make GPU pools schedulable, observable and elastic."""

    def __init__(
        self,
        name: str,
        *,
        cluster_name: pulumi.Input[str],
        region: str,
        kubernetes_version: str,
        access: ClusterAccess,
        asg_names: Sequence[pulumi.Input[str]],
        node_group_arns: Sequence[pulumi.Input[str]],
        chart_versions: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:ClusterAddons", name, None, opts)
        k8s_opts = access.child_opts(self)
        identity = aws.get_caller_identity_output()
        partition = aws.get_partition_output().partition
        asg_arns = pulumi.Output.all(identity.account_id, partition, *asg_names).apply(
            lambda a: [
                f"arn:{a[1]}:autoscaling:{region}:{a[0]}:autoScalingGroup:*:"
                f"autoScalingGroupName/{asg}"
                for asg in a[2:]
            ]
        )
        policy = pulumi.Output.all(asg_arns, *node_group_arns).apply(
            lambda a: iam.document(iam.cluster_autoscaler_statements(a[0], a[1:]))
        )
        self.autoscaler_role = access.irsa_role(
            f"{name}-cluster-autoscaler",
            namespace=AUTOSCALER_NAMESPACE,
            service_account=AUTOSCALER_SA,
            policy=policy,
            parent=self,
        )
        values = pulumi.Output.all(cluster_name, self.autoscaler_role.arn).apply(
            lambda a: autoscaler_values(a[0], region, a[1], kubernetes_version)
        )
        release_values = {
            "cluster-autoscaler": values,
            "nvidia-device-plugin": gpu_daemon_values(),
            # The chart's own ServiceMonitor would need the operator's CRDs before this release
            # exists; the Monitoring component declares it instead, after kube-prometheus-stack.
            "dcgm-exporter": {**gpu_daemon_values(), "serviceMonitor": {"enabled": False}},
        }
        for chart, chart_values in release_values.items():
            k8s.helm.v3.Release(
                f"{name}-{chart}",
                name=chart,
                chart=chart,
                version=chart_versions[chart],
                repository_opts={"repo": CHART_REPOS[chart]},
                namespace=AUTOSCALER_NAMESPACE,
                values=chart_values,
                opts=k8s_opts,
            )
        self.gpu_metrics = ScrapeTarget(
            name="dcgm-exporter",
            namespace=AUTOSCALER_NAMESPACE,
            labels=DCGM_SERVICE_LABELS,
            port=DCGM_PORT_NAME,
            node_label=True,
        )
        self.ebs_csi_role = self._ebs_csi_driver(name, cluster_name, access, partition)
        # The VPC CNI that EKS installs, taken over as a managed add-on to switch on its
        # network-policy agent: without it every NetworkPolicy is accepted and ignored.
        aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=cluster_name,
            addon_name="vpc-cni",
            configuration_values=json.dumps(VPC_CNI_CONFIG),
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Volumes are encrypted (AWS-managed EBS key, like the node root volumes) and created in
        # the zone of the pod that first mounts them.
        storage_class = k8s.storage.v1.StorageClass(
            f"{name}-{STORAGE_CLASS}",
            metadata={"name": STORAGE_CLASS},
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=k8s_opts,
        )
        self.storage_class = storage_class.metadata.apply(lambda m: m["name"])
        self.register_outputs(
            {
                "autoscaler_role_arn": self.autoscaler_role.arn,
                "ebs_csi_role_arn": self.ebs_csi_role.arn,
                "storage_class": self.storage_class,
            }
        )

    def _ebs_csi_driver(
        self,
        name: str,
        cluster_name: pulumi.Input[str],
        access: ClusterAccess,
        partition: pulumi.Output[str],
    ) -> aws.iam.Role:
        """The EKS-managed EBS CSI driver add-on with its IRSA role (EKS has no EBS provisioner
        of its own since 1.23: without it a PersistentVolumeClaim stays Pending)."""
        trust = pulumi.Output.all(access.oidc_provider_arn, access.oidc_issuer_url).apply(
            lambda a: iam.irsa_trust_policy(a[0], a[1], AUTOSCALER_NAMESPACE, EBS_CSI_SA)
        )
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(f"{name}-ebs-csi-role", assume_role_policy=trust, opts=child)
        aws.iam.RolePolicyAttachment(
            f"{name}-ebs-csi-policy",
            role=role.name,
            policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/", EBS_CSI_POLICY),
            opts=pulumi.ResourceOptions(parent=role),
        )
        aws.eks.Addon(
            f"{name}-ebs-csi-driver",
            cluster_name=cluster_name,
            addon_name="aws-ebs-csi-driver",
            service_account_role_arn=role.arn,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            opts=child,
        )
        return role
