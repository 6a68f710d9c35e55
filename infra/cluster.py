"""Cluster: EKS control plane with audit logging, KMS-encrypted secrets, private API, IRSA."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config import ClusterConfig
from infra.iam import service_trust_policy

CONTROL_PLANE_LOGS = ("api", "audit", "authenticator", "controllerManager", "scheduler")
CLUSTER_POLICIES = ("AmazonEKSClusterPolicy",)
NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
)


def render_kubeconfig(name: str, endpoint: str, ca_data: str, region: str) -> str:
    """Kubeconfig that authenticates with `aws eks get-token` (no long-lived credentials)."""
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", name, "--region", region],
        }
    }
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {"server": endpoint, "certificate-authority-data": ca_data},
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "users": [{"name": name, "user": user}],
        }
    )


def _managed_policy_role(
    name: str, service: str, policies: Sequence[str], parent: pulumi.Resource
) -> aws.iam.Role:
    """Role for an AWS service with AWS-managed policies attached."""
    role = aws.iam.Role(
        name,
        assume_role_policy=service_trust_policy(service),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    for policy in policies:
        aws.iam.RolePolicyAttachment(
            f"{name}-{policy.lower().replace('_', '-')}",
            role=role.name,
            policy_arn=f"arn:aws:iam::aws:policy/{policy}",
            opts=pulumi.ResourceOptions(parent=role),
        )
    return role


class Cluster(pulumi.ComponentResource):
    """EKS cluster, its KMS key, IAM roles, OIDC provider, kubeconfig and Kubernetes provider."""

    def __init__(
        self,
        name: str,
        cfg: ClusterConfig,
        *,
        region: str,
        subnet_ids: Sequence[pulumi.Input[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.kms_key = aws.kms.Key(
            f"{name}-secrets-key",
            description=f"Envelope encryption of Kubernetes secrets in {name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=child,
        )
        role = _managed_policy_role(
            f"{name}-cluster-role", "eks.amazonaws.com", CLUSTER_POLICIES, self
        )
        self.node_role = _managed_policy_role(
            f"{name}-node-role", "ec2.amazonaws.com", NODE_POLICIES, self
        )
        public = bool(cfg.public_access_cidrs)
        self.eks = aws.eks.Cluster(
            name,
            name=name,
            version=cfg.kubernetes_version,
            role_arn=role.arn,
            vpc_config={
                "subnet_ids": list(subnet_ids),
                "endpoint_private_access": True,
                # Off unless CIDRs are configured; never open to the internet.
                "endpoint_public_access": public,
                "public_access_cidrs": list(cfg.public_access_cidrs) if public else None,
            },
            access_config={
                "authentication_mode": "API",
                "bootstrap_cluster_creator_admin_permissions": True,
            },
            enabled_cluster_log_types=list(CONTROL_PLANE_LOGS),
            encryption_config={
                "provider": {"key_arn": self.kms_key.arn},
                "resources": ["secrets"],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
        )
        self.name = self.eks.name
        self.security_group_id = self.eks.vpc_config.cluster_security_group_id
        self.oidc_issuer_url = self.eks.identities[0].oidcs[0].issuer
        # No thumbprint pinned: IAM validates EKS OIDC issuers against its own trusted CAs.
        self.oidc_provider = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc",
            url=self.oidc_issuer_url,
            client_id_lists=["sts.amazonaws.com"],
            opts=child,
        )
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(
                self.eks.name, self.eks.endpoint, self.eks.certificate_authority.data
            ).apply(lambda a: render_kubeconfig(a[0], a[1], a[2], region))
        )
        self.k8s_provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, opts=child)
        self.register_outputs(
            {
                "cluster_name": self.name,
                "oidc_provider_arn": self.oidc_provider.arn,
                "kubeconfig": self.kubeconfig,
            }
        )
