"""Database: private, encrypted RDS PostgreSQL for the MLflow backend and the Feast SQL registry.

The master user only creates the services' roles (infra/db_roles.py, run by DatabaseRoles' Job);
each service connects as its own role, to its own database, verifying RDS' certificate.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra import db_roles
from infra.config import DataConfig
from infra.network import DataPlacement

DB_NAME = db_roles.ADMIN_DATABASE
DB_USER = db_roles.MASTER_USER
DB_PORT = db_roles.PORT


class Database(pulumi.ComponentResource):
    """RDS PostgreSQL reachable only from the cluster's security group, with a generated password
    for the master and for each service role in `roles` (`db_roles.stack_roles`)."""

    def __init__(
        self,
        name: str,
        cfg: DataConfig,
        placement: DataPlacement,
        roles: Sequence[db_roles.ServiceRole] = db_roles.ROLES,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.roles = tuple(roles)
        self.password = random.RandomPassword(
            f"{name}-password", length=32, special=False, opts=child
        )
        # Rotate one with `pulumi up --replace <its URN>`: the roles Job re-runs and ALTERs it.
        self.role_passwords = {
            role.name: random.RandomPassword(
                f"{name}-{role.name.replace('_', '-')}-password",
                length=32,
                special=False,
                opts=child,
            )
            for role in self.roles
        }
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

    def url_for(self, role: str, driver: str) -> pulumi.Output[str]:
        """Secret SQLAlchemy URL of a service role (`driver`: psycopg2 for MLflow, psycopg for
        Feast, asyncpg for Prefect) to its own database, verify-full against the mounted RDS CA
        bundle (`db_roles.service_url`)."""
        service = db_roles.role_named(role, self.roles)
        return pulumi.Output.secret(
            pulumi.Output.all(self.address, self.role_passwords[role].result).apply(
                lambda a: db_roles.service_url(driver, service.name, a[1], a[0], service.database)
            )
        )

    def admin_url(self) -> pulumi.Output[str]:
        """Secret libpq URL of the master user: for the roles Job in the db-admin namespace only."""
        return pulumi.Output.secret(
            pulumi.Output.all(self.address, self.password.result).apply(
                lambda a: db_roles.connection_url("postgresql", DB_USER, a[1], a[0], DB_NAME)
            )
        )

    def role_verifiers(self) -> pulumi.Output[dict[str, str]]:
        """Secret SCRAM verifier of each role's password, by role name (what the Job sets)."""
        names = [role.name for role in self.roles]
        return pulumi.Output.secret(
            pulumi.Output.all(*(self.role_passwords[n].result for n in names)).apply(
                lambda pws: {
                    n: db_roles.role_verifier(db_roles.role_named(n, self.roles), pw)
                    for n, pw in zip(names, pws, strict=True)
                }
            )
        )
