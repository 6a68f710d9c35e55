"""Network: VPC over N AZs, private subnets for nodes and data, public subnets for LBs and NAT."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pulumi
import pulumi_aws as aws

from infra.config import NetworkConfig


def subnet_tags(cluster_name: str, *, public: bool, name: str) -> dict[str, str]:
    """Tags EKS and the AWS load balancer integration use to pick subnets."""
    role = "kubernetes.io/role/elb" if public else "kubernetes.io/role/internal-elb"
    return {"Name": name, role: "1", f"kubernetes.io/cluster/{cluster_name}": "shared"}


# Each data service brings its own kind of subnet group (RDS, ElastiCache).
SubnetGroupType = type[aws.rds.SubnetGroup] | type[aws.elasticache.SubnetGroup]


class Placed(NamedTuple):
    """What a data service's instance is attached to."""

    subnet_group_name: pulumi.Output[str]
    security_group_id: pulumi.Output[str]


@dataclass(frozen=True)
class DataPlacement:
    """Where a managed data service lives: the private subnets, reachable from the cluster only."""

    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    client_security_group_id: pulumi.Input[str]

    def place(
        self,
        name: str,
        *,
        subnet_group: SubnetGroupType,
        port: int,
        description: str,
        opts: pulumi.ResourceOptions,
    ) -> Placed:
        """`<name>-subnets` over the private subnets and `<name>-sg`, which opens one TCP port
        to the cluster's nodes and nothing else."""
        group = subnet_group(f"{name}-subnets", subnet_ids=list(self.subnet_ids), opts=opts)
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=self.vpc_id,
            description=description,
            ingress=[
                {
                    "protocol": "tcp",
                    "from_port": port,
                    "to_port": port,
                    "security_groups": [self.client_security_group_id],
                }
            ],
            opts=opts,
        )
        return Placed(group.name, sg.id)


class Network(pulumi.ComponentResource):
    """VPC, subnets, internet and NAT gateways, route tables."""

    def __init__(
        self,
        name: str,
        cfg: NetworkConfig,
        cluster_name: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlre:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        azs = aws.get_availability_zones_output(state="available").names
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=cfg.vpc_cidr,
            enable_dns_hostnames=True,  # EKS private endpoint and RDS need DNS hostnames
            enable_dns_support=True,
            tags={"Name": name},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            opts=child,
        )
        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        nat_ids: list[pulumi.Output[str]] = []
        for i in range(cfg.az_count):
            public = self._subnet(
                f"{name}-public-{i}",
                public=True,
                cidr=cfg.public_subnet_cidrs[i],
                az=azs[i],
                route_table=public_rt,
                cluster_name=cluster_name,
            )
            self.public_subnets.append(public)
            if i == 0 or not cfg.single_nat_gateway:
                eip = aws.ec2.Eip(f"{name}-nat-eip-{i}", domain="vpc", opts=child)
                nat = aws.ec2.NatGateway(
                    f"{name}-nat-{i}",
                    allocation_id=eip.id,
                    subnet_id=public.id,
                    tags={"Name": f"{name}-nat-{i}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
                nat_ids.append(nat.id)
            private_rt = aws.ec2.RouteTable(
                f"{name}-private-rt-{i}",
                vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat_ids[-1]}],
                opts=child,
            )
            private = self._subnet(
                f"{name}-private-{i}",
                public=False,
                cidr=cfg.private_subnet_cidrs[i],
                az=azs[i],
                route_table=private_rt,
                cluster_name=cluster_name,
            )
            self.private_subnets.append(private)
        self.vpc_id = self.vpc.id
        self.private_subnet_ids = [s.id for s in self.private_subnets]
        self.public_subnet_ids = [s.id for s in self.public_subnets]
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "private_subnet_ids": self.private_subnet_ids,
                "public_subnet_ids": self.public_subnet_ids,
            }
        )

    def _subnet(
        self,
        name: str,
        *,
        public: bool,
        cidr: str,
        az: pulumi.Input[str],
        route_table: aws.ec2.RouteTable,
        cluster_name: str,
    ) -> aws.ec2.Subnet:
        """A subnet in one AZ, tagged for EKS, associated with its route table (`<name>-rta`)."""
        child = pulumi.ResourceOptions(parent=self)
        subnet = aws.ec2.Subnet(
            name,
            vpc_id=self.vpc.id,
            cidr_block=cidr,
            availability_zone=az,
            # Only LBs and NAT live in public subnets, with their own IPs; private subnets
            # keep the AWS default (never public).
            map_public_ip_on_launch=False if public else None,
            tags=subnet_tags(cluster_name, public=public, name=name),
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-rta", subnet_id=subnet.id, route_table_id=route_table.id, opts=child
        )
        return subnet
