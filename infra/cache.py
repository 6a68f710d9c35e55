"""Cache: ElastiCache Redis for the Feast online store, encrypted at rest and in transit + AUTH."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.config import DataConfig
from infra.network import DataPlacement

REDIS_PORT = 6379


def feast_connection_string(host: str, token: str) -> str:
    """Feast redis online-store connection string (TLS + AUTH)."""
    return f"{host}:{REDIS_PORT},ssl=true,password={token}"


class Cache(pulumi.ComponentResource):
    """Redis replication group in private subnets, reachable only from the cluster."""

    def __init__(
        self,
        name: str,
        cfg: DataConfig,
        placement: DataPlacement,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:Cache", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # AUTH tokens allow only some special characters; alphanumeric avoids the trap.
        self.auth_token = random.RandomPassword(
            f"{name}-auth-token", length=48, special=False, opts=child
        )
        placed = placement.place(
            name,
            subnet_group=aws.elasticache.SubnetGroup,
            port=REDIS_PORT,
            description="Redis from the EKS cluster only",
            opts=child,
        )
        replicated = cfg.redis_num_cache_clusters >= 2
        self.group = aws.elasticache.ReplicationGroup(
            name,
            description="Feast online store",
            engine="redis",
            engine_version=cfg.redis_engine_version,
            node_type=cfg.redis_node_type,
            num_cache_clusters=cfg.redis_num_cache_clusters,
            automatic_failover_enabled=replicated,
            multi_az_enabled=replicated,
            port=REDIS_PORT,
            subnet_group_name=placed.subnet_group_name,
            security_group_ids=[placed.security_group_id],
            at_rest_encryption_enabled=True,
            transit_encryption_enabled=True,
            auth_token=self.auth_token.result,
            # A new token is accepted alongside the old one while the clients' pods roll.
            auth_token_update_strategy="ROTATE",
            snapshot_retention_limit=1,
            apply_immediately=True,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["authToken"]),
        )
        self.endpoint = self.group.primary_endpoint_address
        self.register_outputs({"endpoint": self.endpoint})

    def feast_connection(self) -> pulumi.Output[str]:
        """Secret connection string for Feast."""
        return pulumi.Output.secret(
            pulumi.Output.all(self.endpoint, self.auth_token.result).apply(
                lambda a: feast_connection_string(a[0], a[1])
            )
        )
