"""Kubernetes label-selector semantics, shared by the policy rules and the network-policy tests.

Pure and dependency-free: the policy pack runs it with only the repository on sys.path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Label Kubernetes puts on every namespace (1.22+): how a policy selects a namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _get(mapping: Mapping[str, Any], snake: str, camel: str) -> Any:
    """A field in either spelling: Pulumi inputs are snake_case, the engine's props camelCase."""
    return mapping.get(camel, mapping.get(snake))


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """One matchExpressions entry (In, NotIn, Exists, DoesNotExist)."""
    key, operator = expression["key"], expression["operator"]
    values = set(expression.get("values") or [])
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    raise ValueError(f"unknown label selector operator {operator!r}")


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """True when a LabelSelector selects `labels`; an empty selector selects everything."""
    selector = selector or {}
    match_labels = _get(selector, "match_labels", "matchLabels") or {}
    expressions = _get(selector, "match_expressions", "matchExpressions") or []
    return all(labels.get(k) == v for k, v in match_labels.items()) and all(
        _expression_matches(e, labels) for e in expressions
    )


def policy_types(spec: Mapping[str, Any]) -> set[str]:
    """The directions a NetworkPolicy restricts (Kubernetes' default when none are listed)."""
    declared = _get(spec, "policy_types", "policyTypes")
    if declared:
        return set(declared)
    return {"Ingress", "Egress"} if _get(spec, "egress", "egress") else {"Ingress"}


def selects_pod(policy: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> bool:
    """True when a NetworkPolicy manifest applies to a pod of `namespace` with `labels`."""
    metadata, spec = policy.get("metadata") or {}, policy.get("spec") or {}
    return metadata.get("namespace") == namespace and selector_matches(
        _get(spec, "pod_selector", "podSelector"), labels
    )
