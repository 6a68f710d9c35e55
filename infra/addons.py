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
from infra.k8s import IRSA_ANNOTATION, cpu_pool_selector
from mlre import k8s_labels

AUTOSCALER_NAMESPACE = "kube-system"
AUTOSCALER_SA = "cluster-autoscaler"


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
        oidc_provider_arn: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
        asg_names: Sequence[pulumi.Input[str]],
        node_group_arns: Sequence[pulumi.Input[str]],
        chart_versions: dict[str, str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:ClusterAddons", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
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
        self.autoscaler_role = iam.irsa_role(
            f"{name}-cluster-autoscaler",
            oidc_provider_arn=oidc_provider_arn,
            oidc_issuer_url=oidc_issuer_url,
            namespace=AUTOSCALER_NAMESPACE,
            service_account=AUTOSCALER_SA,
            policy=policy,
            parent=self,
        )
        values = pulumi.Output.all(cluster_name, self.autoscaler_role.arn).apply(
            lambda a: autoscaler_values(a[0], region, a[1], kubernetes_version)
        )
        k8s.helm.v3.Release(
            f"{name}-cluster-autoscaler",
            name="cluster-autoscaler",
            chart="cluster-autoscaler",
            version=chart_versions["cluster-autoscaler"],
            repository_opts={"repo": "https://kubernetes.github.io/autoscaler"},
            namespace=AUTOSCALER_NAMESPACE,
            values=values,
            opts=k8s_opts,
        )
        k8s.helm.v3.Release(
            f"{name}-nvidia-device-plugin",
            name="nvidia-device-plugin",
            chart="nvidia-device-plugin",
            version=chart_versions["nvidia-device-plugin"],
            repository_opts={"repo": "https://nvidia.github.io/k8s-device-plugin"},
            namespace=AUTOSCALER_NAMESPACE,
            values=gpu_daemon_values(),
            opts=k8s_opts,
        )
        k8s.helm.v3.Release(
            f"{name}-dcgm-exporter",
            name="dcgm-exporter",
            chart="dcgm-exporter",
            version=chart_versions["dcgm-exporter"],
            repository_opts={"repo": "https://nvidia.github.io/dcgm-exporter/helm-charts"},
            namespace=AUTOSCALER_NAMESPACE,
            # No Prometheus operator here: scrape the exporter's Service, not a ServiceMonitor.
            values={**gpu_daemon_values(), "serviceMonitor": {"enabled": False}},
            opts=k8s_opts,
        )
        self.register_outputs({"autoscaler_role_arn": self.autoscaler_role.arn})
