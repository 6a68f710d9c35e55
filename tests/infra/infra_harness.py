"""Test harness for the Pulumi program: stack config, recording mocks, manifest rendering."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "mlre"
ACCOUNT = "123456789012"
REGION = "us-east-1"
AZS = ["us-east-1a", "us-east-1b", "us-east-1c"]
OIDC_ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_KEYS = ["mlre:prefectApiKey", "mlre:alertPageWebhookUrl", "mlre:alertTicketWebhookUrl"]
TEST_SECRETS = {
    "mlre:prefectApiKey": "pnu_test_only_not_a_real_key",
    "mlre:alertPageWebhookUrl": "https://pager.example.com/hooks/page-test-only",
    "mlre:alertTicketWebhookUrl": "https://tickets.example.com/hooks/ticket-test-only",
}
# Files the program reads that are not committed (the real RDS CA bundle is fetched by hand).
TEST_FILES = {"mlre:rdsCaBundleFile": "tests/infra/fixtures/rds-ca-test-only.pem"}


def _test_only_digest(image: str) -> str:
    """A well-formed but made-up digest (sha256 of a label): TEST-ONLY, no registry has it."""
    return f"{image}@sha256:{hashlib.sha256(f'test-only {image}'.encode()).hexdigest()}"


# The stack files hold IMAGE_DIGEST placeholders the user replaces; tests pin fake digests.
TEST_IMAGES = {
    "mlre:mlflowImage": _test_only_digest("ghcr.io/mlflow/mlflow:v3.17.2-full"),
    "mlre:feastImage": _test_only_digest("feastdev/feature-server:0.67.0"),
    "mlre:prefectImage": _test_only_digest("prefecthq/prefect:3.8.8-python3.11-kubernetes"),
    "mlre:servingImage": _test_only_digest(
        f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlre:abc1234"
    ),
}

# mlre:exposeServicesPublicly with everything it requires (test-only domain, ARN and CIDR).
PUBLIC_EXPOSURE = {
    "mlre:exposeServicesPublicly": True,
    "mlre:publicDomain": "ml.example.com",
    "mlre:publicCertificateArn": (
        f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0f1e2d3c-0000-4000-8000-000000000000"
    ),
    "mlre:publicSourceCidrs": ["203.0.113.0/24"],
}


def _config_string(value: Any) -> str:
    """Config values reach the program as strings; lists and maps as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def project_defaults() -> dict[str, Any]:
    """Defaults declared in Pulumi.yaml (the single source of defaults)."""
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    return {key: spec["default"] for key, spec in declared.items() if "default" in spec}


def stack_config(stack: str, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What the engine would hand the program: Pulumi.yaml defaults, then Pulumi.<stack>.yaml."""
    stack_values = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    merged = {
        **project_defaults(),
        **stack_values,
        **TEST_SECRETS,
        **TEST_FILES,
        **TEST_IMAGES,
        **(overrides or {}),
    }
    return {key: _config_string(value) for key, value in merged.items()}


def unwrap(value: Any) -> Any:
    """Replace the SDK's secret envelopes in mock inputs with their plain values."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270":
            return unwrap(value.get("value"))
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@dataclass(frozen=True)
class Recorded:
    """One resource registration the mocks saw."""

    typ: str
    name: str
    inputs: dict[str, Any]


def _computed(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs AWS/Kubernetes would compute that the program reads back."""
    arn = f"arn:aws:{typ.split(':')[1].split('/', maxsplit=1)[0]}:{REGION}:{ACCOUNT}:{name}"
    out: dict[str, Any] = {"arn": arn}
    if typ == "aws:eks/cluster:Cluster":
        out |= {
            "name": inputs.get("name", name),
            "endpoint": "https://EXAMPLE.gr7.us-east-1.eks.amazonaws.com",
            "certificateAuthority": {"data": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"},
            "identities": [{"oidcs": [{"issuer": OIDC_ISSUER}]}],
            "vpcConfig": {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": "sg-cluster"},
        }
    elif typ == "aws:eks/nodeGroup:NodeGroup":
        out["resources"] = [{"autoscalingGroups": [{"name": f"eks-{name}-asg"}]}]
    elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
        out["latestVersion"] = 1
    elif typ == "aws:s3/bucket:Bucket":
        bucket = f"{name}-a1b2c3"
        out |= {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}"}
    elif typ == "aws:rds/instance:Instance":
        out |= {"address": f"{name}.abc.{REGION}.rds.amazonaws.com", "port": 5432}
    elif typ == "aws:elasticache/replicationGroup:ReplicationGroup":
        out["primaryEndpointAddress"] = f"master.{name}.abc.use1.cache.amazonaws.com"
    elif typ == "random:index/randomPassword:RandomPassword":
        out["result"] = "p" * int(inputs.get("length", 16))
    elif typ in {"aws:iam/role:Role", "aws:budgets/budget:Budget"}:
        out["name"] = name
    elif typ == "kubernetes:core/v1:Service":
        out["status"] = {"loadBalancer": {"ingress": [{"hostname": f"{name}.elb.example.com"}]}}
    return out


CALLS: dict[str, dict[str, Any]] = {
    "aws:index/getAvailabilityZones:getAvailabilityZones": {
        "id": REGION,
        "names": AZS,
        "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
    },
    "aws:index/getCallerIdentity:getCallerIdentity": {
        "id": ACCOUNT,
        "accountId": ACCOUNT,
        "arn": f"arn:aws:iam::{ACCOUNT}:user/ci",
        "userId": "AIDAEXAMPLE",
    },
    "aws:index/getPartition:getPartition": {
        "id": "aws",
        "partition": "aws",
        "dnsSuffix": "amazonaws.com",
        "reverseDnsPrefix": "com.amazonaws",
    },
}


class RecordingMocks(pulumi.runtime.Mocks):
    """Mocks that answer every call the program makes and record every resource."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        """Record the inputs and return them plus computed outputs."""
        inputs = unwrap(dict(args.inputs))
        self.resources.append(Recorded(args.typ, args.name, inputs))
        return f"{args.name}-id", {**args.inputs, **_computed(args.typ, args.name, inputs)}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        """Answer known lookups; fail loudly on any new one so a mock gap is obvious."""
        if args.token not in CALLS:
            raise NotImplementedError(f"mock has no answer for {args.token}")
        return CALLS[args.token]


@dataclass
class Run:
    """Everything one mocked program run produced."""

    resources: list[Recorded]
    outputs: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    config: dict[str, str] = field(default_factory=dict)  # the config the program ran with

    def of_type(self, typ: str) -> list[Recorded]:
        """Recorded resources of one type token."""
        return [r for r in self.resources if r.typ == typ]

    def named(self, name: str) -> Recorded:
        """The one recorded resource with this logical name."""
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"{len(matches)} resources named {name}"
        return matches[0]


def runs_prefect_server(run: Run) -> bool:
    """Whether the run's config turned the in-cluster Prefect server on (mlre:prefectServer)."""
    return run.config.get("mlre:prefectServer") == "true"


def run_mocked(
    program: Callable[[], Any], *, stack: str = "dev", config: Mapping[str, str] | None = None
) -> Run:
    """Run `program` under fresh mocks; it may return a dict of outputs to resolve."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False)
    config = dict(config or stack_config(stack))
    pulumi.runtime.set_all_config(config, SECRET_KEYS)
    run = Run(resources=mocks.resources, config=config)

    @pulumi.runtime.test
    def _go() -> Any:
        value = program()
        run.value = value
        if not isinstance(value, dict):
            return None
        keys = list(value)
        return pulumi.Output.all(*value.values()).apply(
            lambda resolved: run.outputs.update(dict(zip(keys, resolved, strict=True)))
        )

    _go()
    return run


def run_stack(stack: str, overrides: Mapping[str, Any] | None = None) -> Run:
    """Run the whole program (config.load_config + stack.build) for one stack."""
    from infra.config import load_config
    from infra.stack import build

    return run_mocked(
        lambda: build(load_config()), stack=stack, config=stack_config(stack, overrides)
    )


def to_int(value: Any) -> Any:
    """Mocks see numbers as floats; manifests want ints where the value is whole."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_int(v) for v in value]
    return value


# API groups of custom resources: kubernetes-validate has no schema for them.
CRD_GROUPS = ("monitoring.coreos.com",)


def _declared(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(type token, manifest) of every Kubernetes object declared (Helm releases excluded)."""
    return [
        (r.typ, to_int(r.inputs))
        for r in run.resources
        if r.typ.startswith("kubernetes:")
        and "apiVersion" in r.inputs
        and "kind" in r.inputs
        and not r.typ.startswith("kubernetes:helm.sh")
    ]


def _is_custom(typ: str) -> bool:
    return typ.removeprefix("kubernetes:").startswith(CRD_GROUPS)


def manifests(run: Run) -> list[dict[str, Any]]:
    """Built-in Kubernetes objects the program declares, as manifest dicts (the ones
    kubernetes-validate has schemas for; custom resources are in `custom_resources`)."""
    return [manifest for typ, manifest in _declared(run) if not _is_custom(typ)]


def custom_resources(run: Run) -> list[dict[str, Any]]:
    """Custom resources (PrometheusRule, ServiceMonitor) the program declares."""
    return [manifest for typ, manifest in _declared(run) if _is_custom(typ)]


def helm_releases(run: Run) -> dict[str, dict[str, Any]]:
    """Helm releases by chart name, their inputs with numbers as ints."""
    return {
        r.inputs["chart"]: to_int(r.inputs) for r in run.of_type("kubernetes:helm.sh/v3:Release")
    }


def validation_args(
    typ: str, props: Mapping[str, Any], name: str = "fixture"
) -> ResourceValidationArgs:
    """What the policy engine hands a ResourceValidationPolicy for one resource."""
    opts = PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )
    return ResourceValidationArgs(
        resource_type=typ,
        props=props,
        urn=f"urn:pulumi:test::{PROJECT}::{typ}::{name}",
        name=name,
        opts=opts,
        provider=None,
    )


def violations(policy: ResourceValidationPolicy, typ: str, props: Mapping[str, Any]) -> list[str]:
    """Messages `policy` reports for one resource."""
    found: list[str] = []
    policy.validate(validation_args(typ, props), lambda message, urn=None: found.append(message))
    return found


def stack_violations(
    policy: StackValidationPolicy, resources: Sequence[tuple[str, str, Mapping[str, Any]]]
) -> list[str]:
    """Messages a StackValidationPolicy reports for (type, name, props) resources."""
    opts = validation_args("x", {}).opts
    policy_resources = [
        PolicyResource(
            resource_type=typ,
            props=props,
            urn=f"urn:pulumi:test::{PROJECT}::{typ}::{name}",
            name=name,
            opts=opts,
            provider=None,
            parent=None,
            dependencies=[],
            property_dependencies={},
        )
        for typ, name, props in resources
    ]
    found: list[str] = []
    policy.validate(StackValidationArgs(policy_resources), lambda m, urn=None: found.append(m))
    return found


def recorded(run: Run) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, name, inputs) of every resource a run declared, as a stack policy sees them."""
    return [(r.typ, r.name, r.inputs) for r in run.resources]
