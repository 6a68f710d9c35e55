"""Database: private, encrypted RDS PostgreSQL for the MLflow backend and the Feast SQL registry."""

from __future__ import annotations

from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.config import DataConfig
from infra.network import DataPlacement

DB_NAME = "mlre"
DB_USER = "mlre_admin"
DB_PORT = 5432


def sqlalchemy_url(driver: str, host: str, password: str) -> str:
    """SQLAlchemy URL that insists on TLS to RDS."""
    return (
        f"postgresql+{driver}://{DB_USER}:{quote(password, safe='')}@{host}:{DB_PORT}/{DB_NAME}"
        "?sslmode=require"
    )


class Database(pulumi.ComponentResource):
    """RDS PostgreSQL reachable only from the cluster's security group."""

    def __init__(
        self,
        name: str,
        cfg: DataConfig,
        placement: DataPlacement,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.password = random.RandomPassword(
            f"{name}-password", length=32, special=False, opts=child
        )
        placed = placement.place(
            name,
            subnet_group=aws.rds.SubnetGroup,
            port=DB_PORT,
            description="PostgreSQL from the EKS cluster only",
            opts=child,
        )
        self.instance = aws.rds.Instance(
            name,
            engine="postgres",
            engine_version=cfg.db_engine_version,
            instance_class=cfg.db_instance_class,
            allocated_storage=cfg.db_allocated_storage_gb,
            max_allocated_storage=cfg.db_allocated_storage_gb * 5,
            storage_type="gp3",
            storage_encrypted=True,
            db_name=DB_NAME,
            username=DB_USER,
            password=self.password.result,
            db_subnet_group_name=placed.subnet_group_name,
            vpc_security_group_ids=[placed.security_group_id],
            publicly_accessible=False,
            multi_az=cfg.db_multi_az,
            backup_retention_period=cfg.db_backup_retention_days,
            deletion_protection=cfg.db_deletion_protection,
            # Protected databases keep a final snapshot; throwaway ones do not.
            skip_final_snapshot=not cfg.db_deletion_protection,
            final_snapshot_identifier=f"{name}-final" if cfg.db_deletion_protection else None,
            copy_tags_to_snapshot=True,
            auto_minor_version_upgrade=True,
            enabled_cloudwatch_logs_exports=["postgresql"],
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["password"]),
        )
        self.address = self.instance.address
        self.register_outputs({"address": self.address})

    def url(self, driver: str) -> pulumi.Output[str]:
        """Secret SQLAlchemy URL for `driver` (psycopg2 for MLflow, psycopg for Feast)."""
        return pulumi.Output.secret(
            pulumi.Output.all(self.address, self.password.result).apply(
                lambda a: sqlalchemy_url(driver, a[0], a[1])
            )
        )
