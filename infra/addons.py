"""Cluster add-ons: cluster-autoscaler (GPU scale-from-zero), NVIDIA device plugin, DCGM exporter.

Autoscaler choice: cluster-autoscaler over Karpenter. Our GPU capacity is a few fixed, cost-capped
managed node groups (max size = budget); cluster-autoscaler scales exactly those groups, reads the
ASG node-template tags to scale from zero, and needs no extra CRDs, controller nodes or
interruption queue. Karpenter's strength (picking any instance type on the fly) is what we want
to forbid for cost control.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam
from infra.k8s import IRSA_ANNOTATION, ClusterAccess, cpu_pool_selector
from mlre import k8s_labels

AUTOSCALER_NAMESPACE = "kube-system"
AUTOSCALER_SA = "cluster-autoscaler"
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
            # No Prometheus operator here: scrape the exporter's Service, not a ServiceMonitor.
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
        self.register_outputs({"autoscaler_role_arn": self.autoscaler_role.arn})
