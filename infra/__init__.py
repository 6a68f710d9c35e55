"""Pulumi program for the mlre AWS GPU environment (VPC, EKS, data services, platform workloads)."""
