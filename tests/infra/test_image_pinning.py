"""Every image the stack deploys is pinned by digest (tag kept): config, stack files, manifests."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from infra.config import InfraConfigError, load_config, pinned_image
from infra.policy import rules
from tests.infra.infra_harness import (
    ROOT,
    TEST_IMAGES,
    Run,
    run_mocked,
    stack_config,
    violations,
)

pytestmark = pytest.mark.infra

DIGEST = "sha256:" + "0123456789abcdef" * 4
DECLARED = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
# Every image key, including ones added later (e.g. mlre:postgresClientImage).
IMAGE_KEYS = sorted(key for key in DECLARED if key.endswith("Image"))
# Public images whose digest we cannot resolve here: required, the stack files hold a placeholder.
PLACEHOLDER_KEYS = ("mlre:mlflowImage", "mlre:feastImage", "mlre:prefectImage", "mlre:servingImage")


@pytest.mark.parametrize(
    "value",
    [
        f"ghcr.io/mlflow/mlflow:v3.17.2-full@{DIGEST}",
        f"feastdev/feature-server:0.67.0@{DIGEST}",
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/mlre:abc1234@{DIGEST}",
        f"registry.local:5000/team/app:1.0@{DIGEST}",
    ],
)
def test_pinned_reference_is_accepted(value: str) -> None:
    assert pinned_image(value, "mlflowImage") == value


def test_tag_only_is_refused_with_the_key_value_and_how_to_pin() -> None:
    value = "ghcr.io/mlflow/mlflow:v3.17.2-full"
    with pytest.raises(InfraConfigError) as raised:
        pinned_image(value, "mlflowImage")
    message = str(raised.value)
    assert "mlre:mlflowImage" in message
    assert repr(value) in message
    assert f"docker buildx imagetools inspect {value}" in message
    assert f"crane digest {value}" in message


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f"ghcr.io/mlflow/mlflow:v3.17.2-full@sha256:{'0' * 63}", "64 lowercase hex"),
        (f"ghcr.io/mlflow/mlflow:v3.17.2-full@sha256:{'0' * 65}", "64 lowercase hex"),
        (f"ghcr.io/mlflow/mlflow:v3.17.2-full@sha256:{'A' * 64}", "64 lowercase hex"),
        (f"ghcr.io/mlflow/mlflow:v3.17.2-full@sha512:{'0' * 64}", "64 lowercase hex"),
        ("ghcr.io/mlflow/mlflow:v3.17.2-full@sha256:IMAGE_DIGEST", "64 lowercase hex"),
        (f"ghcr.io/mlflow/mlflow@{DIGEST}", "no tag"),
        (f"registry.local:5000/team/app@{DIGEST}", "no tag"),
        (f"Ghcr.io/MLflow/mlflow:v3@{DIGEST}", "not an image repository"),
        ("", "not an image repository"),
    ],
)
def test_malformed_reference_is_refused(value: str, reason: str) -> None:
    with pytest.raises(InfraConfigError, match=re.escape(reason)):
        pinned_image(value, "feastImage")


def test_every_image_key_is_read_and_validated() -> None:
    assert set(PLACEHOLDER_KEYS) <= set(IMAGE_KEYS)
    for key in IMAGE_KEYS:
        tag_only = stack_config("dev")[key].partition("@")[0]
        config = stack_config("dev", {key: tag_only})
        with pytest.raises(InfraConfigError, match=re.escape(key)):
            run_mocked(load_config, stack="dev", config=config)


def test_no_image_key_defaults_to_a_movable_tag() -> None:
    for key in IMAGE_KEYS:
        if "default" in DECLARED[key]:
            pinned_image(DECLARED[key]["default"], key.removeprefix("mlre:"))
    for key in PLACEHOLDER_KEYS:
        assert "default" not in DECLARED[key], f"{key}: required, no tag-only default"
        assert "@sha256:" in DECLARED[key]["description"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_files_hold_a_digest_placeholder_the_user_must_replace(stack: str) -> None:
    values = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    for key in PLACEHOLDER_KEYS:
        value = values[key]
        assert value.endswith("@sha256:IMAGE_DIGEST"), f"{stack}: {key} = {value!r}"
        # Left as is, `pulumi preview` stops at config time and says how to get the digest.
        with pytest.raises(InfraConfigError, match="crane digest"):
            pinned_image(value, key.removeprefix("mlre:"))
        tag = value.partition("@")[0]
        if key != "mlre:servingImage":  # ours: <account>/mlre:<git sha>
            assert f"Recommended tag: {tag}." in DECLARED[key]["description"]


def _containers(run: Run) -> list[tuple[str, dict]]:
    """(resource, container) for every container and initContainer the program declares."""
    found = []
    for resource in run.resources:
        spec = rules._pod_spec(resource.typ, resource.inputs) or {}
        for field in ("initContainers", "containers"):
            found += [(resource.name, c) for c in spec.get(field) or []]
    return found


def test_every_deployed_container_runs_a_configured_pinned_image(stack_run: Run) -> None:
    containers = _containers(stack_run)
    # mlflow, feast, serving, two workers, alert relay, and the one-shot Jobs at least.
    assert len(containers) >= 7
    # The harness gives both stacks the same (test-only) images.
    configured = {value for key, value in stack_config("dev").items() if key.endswith("Image")}
    assert set(TEST_IMAGES.values()) <= configured
    for workload, container in containers:
        assert container["image"] in configured, f"{workload}: {container['image']}"


def test_policy_refuses_an_unpinned_image_in_a_rendered_workload(
    stack_runs: dict[str, Run],
) -> None:
    policy = next(p for p in rules.POLICIES if p.name == "images-pinned-by-digest")
    (mlflow,) = [r for r in stack_runs["dev"].of_type("kubernetes:apps/v1:Deployment")
                 if r.inputs["metadata"]["name"] == "mlflow"]  # fmt: skip
    assert not violations(policy, mlflow.typ, mlflow.inputs)
    unpinned = copy.deepcopy(mlflow.inputs)
    unpinned["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/mlflow/mlflow:latest"
    assert violations(policy, mlflow.typ, unpinned)
