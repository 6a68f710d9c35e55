"""NetworkPolicy semantics for tests: may this pod open that port on that pod or address?

A connection is allowed when the source's egress allows it (no Egress policy selects the source,
or one of the selecting policies has a matching rule) AND the target's ingress allows it (the
same, for Ingress). Pod IPs are never matched by an ipBlock here: Kubernetes leaves that to the
implementation, so a test that relies on it would prove nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.policy.selectors import (
    NAMESPACE_NAME_LABEL,
    policy_types,
    selector_matches,
    selects_pod,
)


@dataclass(frozen=True)
class Pod:
    """A pod as policies see it: its namespace and labels."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)


Endpoint = Pod | str  # a pod, or an IP address outside the pod network


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    """One NetworkPolicyPeer against the other end of the connection."""
    if "ipBlock" in peer:
        if not isinstance(other, str):
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other)
        excluded = any(address in ipaddress.ip_network(c) for c in block.get("except") or [])
        return address in ipaddress.ip_network(block["cidr"]) and not excluded
    if isinstance(other, str):
        return False
    namespaces = peer.get("namespaceSelector")
    in_namespace = (
        selector_matches(namespaces, {NAMESPACE_NAME_LABEL: other.namespace})
        if namespaces is not None
        else other.namespace == policy_namespace
    )
    return in_namespace and selector_matches(peer.get("podSelector"), other.labels)


def _port_matches(ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    """No ports listed means every port."""
    return not ports or any(
        p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports
    )


def _side_allows(
    policies: Sequence[Mapping[str, Any]],
    pod: Pod,
    *,
    direction: str,
    other: Endpoint,
    port: int,
    protocol: str,
) -> bool:
    """Whether `pod`'s policies of one direction let the connection with `other` through."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if selects_pod(p, pod.namespace, pod.labels) and direction in policy_types(p["spec"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(peer, pod.namespace, other) for peer in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(
    policies: Sequence[Mapping[str, Any]],
    source: Endpoint,
    target: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """May `source` (a pod, or an outside address) open `port` on `target`?"""
    out = not isinstance(source, Pod) or _side_allows(
        policies, source, direction="Egress", other=target, port=port, protocol=protocol
    )
    into = not isinstance(target, Pod) or _side_allows(
        policies, target, direction="Ingress", other=source, port=port, protocol=protocol
    )
    return out and into
