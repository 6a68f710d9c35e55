"""The feature server's Kubernetes auth: the `auth:` block Feast reads, and exactly the RBAC
objects its role lookup needs, asserted like policies on what the mocks saw."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml
from feast import RepoConfig
from feast.permissions.auth.kubernetes_token_parser import KubernetesTokenParser
from feast.permissions.auth_model import KubernetesAuthConfig
from kubernetes.client import RbacV1Subject, V1ObjectMeta, V1RoleBinding, V1RoleRef

from infra.feast_service import ROLE_LOOKUP, feature_store_yaml
from mlre import k8s_labels
from tests.infra.infra_harness import ROOT, Run, manifests

pytestmark = pytest.mark.infra

PLATFORM = "mlre-platform"
TOKEN_REVIEW = f"{PLATFORM}-feast-token-review"
FEAST_SA = {"kind": "ServiceAccount", "name": "feast", "namespace": PLATFORM}
FLOWS_SA = {
    "kind": "ServiceAccount",
    "name": k8s_labels.FLOWS_SERVICE_ACCOUNT,
    "namespace": k8s_labels.FLOWS_NAMESPACE,
}
SERVING_SA = {"kind": "ServiceAccount", "name": "serving", "namespace": PLATFORM}


def _one(run: Run, kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in manifests(run) if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def _rbac(run: Run) -> dict[tuple[str, str], dict[str, Any]]:
    kinds = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    return {
        (m["kind"], m["metadata"]["name"]): m
        for m in manifests(run)
        if m["kind"] in kinds and "feast" in m["metadata"]["name"]
    }


def _pod(run: Run, app: str) -> dict[str, Any]:
    return _one(run, "Deployment", app)["spec"]["template"]["spec"]


def test_feature_store_yaml_turns_on_kubernetes_auth(tmp_path: Path) -> None:
    text = feature_store_yaml("fraud_detection", "lake-bucket")
    parsed = yaml.safe_load(text)
    assert parsed["auth"] == {"type": "kubernetes"}
    # Feast itself reads it as its Kubernetes auth (what `feast serve` then installs).
    config = RepoConfig(repo_path=tmp_path, **parsed)
    assert isinstance(config.auth_config, KubernetesAuthConfig)


def test_the_deployed_config_map_carries_the_auth_block(stack_run: Run) -> None:
    text = _one(stack_run, "ConfigMap", "feast-config")["data"]["feature_store.yaml"]
    assert yaml.safe_load(text)["auth"] == {"type": "kubernetes"}


def test_feast_pod_mounts_its_token_and_mlflow_pod_does_not(stack_run: Run) -> None:
    feast = _pod(stack_run, "feast")
    assert feast["automountServiceAccountToken"] is True  # it calls the Kubernetes API
    assert feast["serviceAccountName"] == "feast"
    assert _pod(stack_run, "mlflow")["automountServiceAccountToken"] is False


def test_exactly_the_rbac_objects_feast_auth_needs(stack_run: Run) -> None:
    assert set(_rbac(stack_run)) == {
        ("ClusterRole", TOKEN_REVIEW),
        ("ClusterRoleBinding", TOKEN_REVIEW),
        ("Role", ROLE_LOOKUP),
        ("RoleBinding", ROLE_LOOKUP),
        ("Role", k8s_labels.FEAST_WRITER_ROLE),
        ("RoleBinding", k8s_labels.FEAST_WRITER_ROLE),
        ("Role", k8s_labels.FEAST_READER_ROLE),
        ("RoleBinding", k8s_labels.FEAST_READER_ROLE),
    }


def test_server_may_review_tokens_cluster_wide_and_nothing_else(stack_run: Run) -> None:
    role = _one(stack_run, "ClusterRole", TOKEN_REVIEW)
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    binding = _one(stack_run, "ClusterRoleBinding", TOKEN_REVIEW)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": TOKEN_REVIEW,
    }
    assert binding["subjects"] == [FEAST_SA]


def test_server_may_list_role_bindings_in_its_namespace_only(stack_run: Run) -> None:
    role = _one(stack_run, "Role", ROLE_LOOKUP)
    assert role["metadata"]["namespace"] == PLATFORM
    assert role["rules"] == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["rolebindings"],
            "verbs": ["list"],
        }
    ]
    binding = _one(stack_run, "RoleBinding", ROLE_LOOKUP)
    assert binding["metadata"]["namespace"] == PLATFORM
    assert binding["roleRef"]["name"] == ROLE_LOOKUP
    assert binding["subjects"] == [FEAST_SA]


@pytest.mark.parametrize(
    ("role", "subject"),
    [(k8s_labels.FEAST_WRITER_ROLE, FLOWS_SA), (k8s_labels.FEAST_READER_ROLE, SERVING_SA)],
)
def test_feast_roles_are_rule_less_roles_bound_in_the_server_namespace(
    stack_run: Run, role: str, subject: dict[str, str]
) -> None:
    kube_role = _one(stack_run, "Role", role)
    assert kube_role["metadata"]["namespace"] == PLATFORM  # where Feast looks (its own)
    assert kube_role["rules"] == []  # grants nothing in Kubernetes; only its name counts
    binding = _one(stack_run, "RoleBinding", role)
    assert binding["metadata"]["namespace"] == PLATFORM
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role}  # fmt: skip
    assert binding["subjects"] == [subject]


class _DeclaredBindings:
    """The RoleBindings the program declares, answered as the RBAC API's list call would."""

    def __init__(self, run: Run) -> None:
        self.bindings = [m for m in manifests(run) if m["kind"] == "RoleBinding"]

    def list_namespaced_role_binding(self, namespace: str) -> Any:
        items = [
            V1RoleBinding(
                metadata=V1ObjectMeta(name=m["metadata"]["name"], namespace=namespace),
                role_ref=V1RoleRef(
                    api_group=m["roleRef"]["apiGroup"],
                    kind=m["roleRef"]["kind"],
                    name=m["roleRef"]["name"],
                ),
                subjects=[RbacV1Subject(**s) for s in m["subjects"]],
            )
            for m in self.bindings
            if m["metadata"]["namespace"] == namespace
        ]
        return type("RoleBindingList", (), {"items": items})()


def _repo_roles() -> set[str]:
    """The roles feature_repo/permissions.py grants by."""
    module = runpy.run_path(str(ROOT / "feature_repo" / "permissions.py"))
    return {
        role for p in (module["feature_writers"], module["feature_readers"])
        for role in p.policy.get_roles()
    }  # fmt: skip


def test_feast_derives_the_intended_roles_from_the_declared_bindings(stack_run: Run) -> None:
    """Not an auth test (no API server here): Feast's own role lookup, run over the bindings
    the program declares, gives each caller the role the repo's permissions expect."""
    parser = KubernetesTokenParser.__new__(KubernetesTokenParser)  # no in-cluster config here
    parser.rbac_v1 = _DeclaredBindings(stack_run)

    def roles(subject: dict[str, str]) -> list[str]:
        return parser.get_roles(PLATFORM, subject["namespace"], subject["name"])

    assert roles(FLOWS_SA) == [k8s_labels.FEAST_WRITER_ROLE]
    assert roles(SERVING_SA) == [k8s_labels.FEAST_READER_ROLE]
    other = {"namespace": k8s_labels.FLOWS_NAMESPACE, "name": "default"}
    assert roles(other) == []
    assert roles({**SERVING_SA, "namespace": k8s_labels.FLOWS_NAMESPACE}) == []
    assert _repo_roles() == {k8s_labels.FEAST_WRITER_ROLE, k8s_labels.FEAST_READER_ROLE}
