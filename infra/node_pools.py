"""Node pools: a CPU system pool and GPU pools that scale from zero (cluster-autoscaler)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.config import GpuPoolConfig
from mlre import k8s_labels

# Kubernetes taint effects spelled the way the EKS API wants them.
EKS_TAINT_EFFECT = {
    "NoSchedule": "NO_SCHEDULE",
    "PreferNoSchedule": "PREFER_NO_SCHEDULE",
    "NoExecute": "NO_EXECUTE",
}
CA_TEMPLATE = "k8s.io/cluster-autoscaler/node-template"


def gpu_node_template_tags(gpus_per_node: int) -> dict[str, str]:
    """ASG tags that tell cluster-autoscaler what a not-yet-existing GPU node looks like.

    Without them it cannot scale a group up from 0: there is no node to copy labels,
    taints and the nvidia.com/gpu capacity from.
    """
    return {
        f"{CA_TEMPLATE}/label/{k8s_labels.POOL_LABEL_KEY}": k8s_labels.GPU_POOL_LABEL_VALUE,
        f"{CA_TEMPLATE}/taint/{k8s_labels.GPU_TAINT_KEY}": (
            f"{k8s_labels.GPU_TAINT_VALUE}:{k8s_labels.GPU_TAINT_EFFECT}"
        ),
        f"{CA_TEMPLATE}/resources/{k8s_labels.GPU_RESOURCE}": str(gpus_per_node),
    }


def hardened_launch_template(
    name: str, volume_gb: int, parent: pulumi.Resource
) -> aws.ec2.LaunchTemplate:
    """Launch template: IMDSv2 only, hop limit 1 (pods cannot use node creds), encrypted EBS."""
    return aws.ec2.LaunchTemplate(
        f"{name}-lt",
        metadata_options={
            "http_endpoint": "enabled",
            "http_tokens": "required",
            "http_put_response_hop_limit": 1,
        },
        block_device_mappings=[
            {
                "device_name": "/dev/xvda",
                "ebs": {
                    "volume_size": volume_gb,
                    "volume_type": "gp3",
                    # The AWS-managed EBS key: a customer key would need a grant for the
                    # autoscaling service-linked role or nodes fail to launch.
                    "encrypted": "true",
                    "delete_on_termination": "true",
                },
            }
        ],
        update_default_version=True,
        opts=pulumi.ResourceOptions(parent=parent),
    )


@dataclass(frozen=True)
class NodeTarget:
    """Where a managed node group joins: the cluster, the node IAM role, the private subnets."""

    cluster_name: pulumi.Input[str]
    node_role_arn: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]


class _NodePool(pulumi.ComponentResource):
    """A managed node group on its own hardened launch template, labelled with its pool.

    The autoscaler owns the group's desired size, so updates ignore it. Subclasses add their
    own children, then call `_register`.
    """

    def __init__(
        self,
        token: str,
        name: str,
        target: NodeTarget,
        *,
        volume_gb: int,
        pool: str,
        opts: pulumi.ResourceOptions | None,
        **group_args: object,
    ) -> None:
        super().__init__(token, name, None, opts)
        launch_template = hardened_launch_template(name, volume_gb, self)
        self.node_group = aws.eks.NodeGroup(
            name,
            cluster_name=target.cluster_name,
            node_role_arn=target.node_role_arn,
            subnet_ids=list(target.subnet_ids),
            launch_template={"id": launch_template.id, "version": launch_template.latest_version},
            update_config={"max_unavailable": 1},
            labels={k8s_labels.POOL_LABEL_KEY: pool},
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["scalingConfig.desiredSize"]),
            **group_args,
        )
        # Name of the Auto Scaling group EKS created for the node group.
        self.asg_name: pulumi.Output[str] = self.node_group.resources.apply(
            lambda r: r[0].autoscaling_groups[0].name
        )

    def _register(self) -> None:
        """Outputs of every pool: what the autoscaler's IAM policy and the tags refer to."""
        self.register_outputs({"node_group_arn": self.node_group.arn, "asg_name": self.asg_name})


class CpuNodePool(_NodePool):
    """On-demand CPU pool for platform services and CPU flow jobs."""

    def __init__(
        self,
        name: str,
        target: NodeTarget,
        *,
        instance_types: Sequence[str],
        min_size: int,
        max_size: int,
        volume_gb: int,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            "mlre:infra:CpuNodePool",
            name,
            target,
            volume_gb=volume_gb,
            pool=k8s_labels.CPU_POOL_LABEL_VALUE,
            opts=opts,
            ami_type="AL2023_x86_64_STANDARD",
            capacity_type="ON_DEMAND",
            instance_types=list(instance_types),
            scaling_config={"min_size": min_size, "max_size": max_size, "desired_size": min_size},
        )
        self._register()


class GpuNodePool(_NodePool):
    """GPU pool: NVIDIA AMI, labelled and tainted from mlre.k8s_labels, min 0, max = cost cap."""

    def __init__(
        self,
        name: str,
        pool: GpuPoolConfig,
        target: NodeTarget,
        *,
        volume_gb: int,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            "mlre:infra:GpuNodePool",
            name,
            target,
            volume_gb=volume_gb,
            pool=k8s_labels.GPU_POOL_LABEL_VALUE,
            opts=opts,
            ami_type="AL2023_x86_64_NVIDIA",
            capacity_type=pool.capacity_type,
            instance_types=list(pool.instance_types),
            scaling_config={"min_size": 0, "max_size": pool.max_size, "desired_size": 0},
            taints=[
                {
                    "key": k8s_labels.GPU_TAINT_KEY,
                    "value": k8s_labels.GPU_TAINT_VALUE,
                    "effect": EKS_TAINT_EFFECT[k8s_labels.GPU_TAINT_EFFECT],
                }
            ],
        )
        for i, (key, value) in enumerate(gpu_node_template_tags(pool.gpus_per_node).items()):
            aws.autoscaling.Tag(
                f"{name}-ca-tag-{i}",
                autoscaling_group_name=self.asg_name,
                tag={"key": key, "value": value, "propagate_at_launch": False},
                opts=pulumi.ResourceOptions(parent=self),
            )
        self._register()
