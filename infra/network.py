"""Network: VPC over N AZs, private subnets for nodes and data, public subnets for LBs and NAT."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.config import NetworkConfig


def subnet_tags(cluster_name: str, *, public: bool, name: str) -> dict[str, str]:
    """Tags EKS and the AWS load balancer integration use to pick subnets."""
    role = "kubernetes.io/role/elb" if public else "kubernetes.io/role/internal-elb"
    return {"Name": name, role: "1", f"kubernetes.io/cluster/{cluster_name}": "shared"}


def cluster_only_security_group(
    name: str,
    *,
    vpc_id: pulumi.Input[str],
    port: int,
    client_security_group_id: pulumi.Input[str],
    description: str,
    opts: pulumi.ResourceOptions,
) -> aws.ec2.SecurityGroup:
    """A data service's security group: one TCP port, open only to the cluster's nodes."""
    return aws.ec2.SecurityGroup(
        name,
        vpc_id=vpc_id,
        description=description,
        ingress=[
            {
                "protocol": "tcp",
                "from_port": port,
                "to_port": port,
                "security_groups": [client_security_group_id],
            }
        ],
        opts=opts,
    )


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
            az = azs[i]
            public = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=self.vpc.id,
                cidr_block=cfg.public_subnet_cidrs[i],
                availability_zone=az,
                map_public_ip_on_launch=False,  # only LBs and NAT live here, with their own IPs
                tags=subnet_tags(cluster_name, public=True, name=f"{name}-public-{i}"),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}-rta",
                subnet_id=public.id,
                route_table_id=public_rt.id,
                opts=child,
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
            private = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=self.vpc.id,
                cidr_block=cfg.private_subnet_cidrs[i],
                availability_zone=az,
                tags=subnet_tags(cluster_name, public=False, name=f"{name}-private-{i}"),
                opts=child,
            )
            private_rt = aws.ec2.RouteTable(
                f"{name}-private-rt-{i}",
                vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat_ids[-1]}],
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}-rta",
                subnet_id=private.id,
                route_table_id=private_rt.id,
                opts=child,
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
