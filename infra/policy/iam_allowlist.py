"""Read-only IAM actions AWS cannot scope to a resource: the only ones allowed on Resource "*".

Dependency-free so the program (infra/iam.py) and the policy pack (rules.py) share one list.
"""

from __future__ import annotations

UNSCOPABLE_READ_ACTIONS = frozenset(
    {
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeLaunchConfigurations",
        "autoscaling:DescribeScalingActivities",
        "autoscaling:DescribeTags",
        "ec2:DescribeImages",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:GetInstanceTypesFromInstanceRequirements",
    }
)
