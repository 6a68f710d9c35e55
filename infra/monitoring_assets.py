"""The committed SLO rule file and Grafana dashboards, read as data (infra never imports mlre.slo).

The rule generator writes `deploy/prometheus/slo-rules.yaml` (Prometheus rule-file format) and
`deploy/grafana/*.json`; `pulumi up` deploys exactly what is committed. Everything here is a pure
function of file contents, so a malformed file fails the preview, naming the file and the field,
instead of failing half-way through an apply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.config import InfraConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SLO_RULES_FILE = Path("deploy/prometheus/slo-rules.yaml")
DASHBOARDS_DIR = Path("deploy/grafana")
REGENERATE = "regenerate and commit it with the SLO rule generator (mlre/slo)"

# Fields a PrometheusRule (monitoring.coreos.com/v1) keeps. A rule-file field the CRD does not
# know would be pruned silently by the API server: refuse it instead.
GROUP_FIELDS = frozenset(
    {"name", "interval", "limit", "query_offset", "partial_response_strategy", "rules"}
)
RULE_FIELDS = frozenset(
    {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
)
# A ConfigMap holds at most 1 MiB; leave room for the object's metadata.
MAX_DASHBOARD_BYTES = 900 * 1024
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_CONFIG_MAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")


@dataclass(frozen=True)
class Dashboard:
    """One Grafana dashboard file: its ConfigMap key (the file name) and JSON text."""

    file_name: str
    title: str
    text: str


@dataclass(frozen=True)
class MonitoringAssets:
    """What the generator committed: rule groups and dashboards."""

    rule_groups: tuple[dict[str, Any], ...]
    dashboards: tuple[Dashboard, ...]

    @classmethod
    def load(cls, root: Path = REPO_ROOT) -> MonitoringAssets:
        """Read the committed rule file and dashboards under `root`."""
        return cls(
            rule_groups=load_rule_groups(root / SLO_RULES_FILE),
            dashboards=load_dashboards(root / DASHBOARDS_DIR),
        )

    def rule_count(self) -> int:
        """Rules over all groups."""
        return sum(len(group["rules"]) for group in self.rule_groups)


def dns_name(text: str) -> str:
    """A DNS-1123 label (Kubernetes object name) from a group or file name."""
    name = _NOT_DNS.sub("-", text.lower()).strip("-")
    if not name:
        raise InfraConfigError(f"{text!r} leaves no characters for a Kubernetes object name")
    return name[:63].rstrip("-")


def rule_object_name(group_name: str) -> str:
    """The PrometheusRule's name for a rule group."""
    return dns_name(f"slo-{group_name}")


def dashboard_object_name(file_name: str) -> str:
    """The ConfigMap's name for a dashboard file."""
    return dns_name(f"dashboard-{file_name.removesuffix('.json')}")


def _collisions(names: list[str]) -> list[str]:
    """Names that occur more than once."""
    return sorted({n for n in names if names.count(n) > 1})


def _check_rule(rule: Any, where: str) -> None:
    """A recording or alerting rule the Prometheus operator accepts."""
    if not isinstance(rule, Mapping):
        raise InfraConfigError(f"{where} is not a mapping; {REGENERATE}")
    unknown = set(rule) - RULE_FIELDS
    if unknown:
        raise InfraConfigError(
            f"{where} has fields a PrometheusRule does not keep: {sorted(unknown)}"
        )
    if ("record" in rule) == ("alert" in rule):
        raise InfraConfigError(f"{where} needs exactly one of 'record' and 'alert'")
    if rule.get("expr") in (None, ""):
        raise InfraConfigError(f"{where} has no 'expr'")
    if "record" in rule and {"for", "keep_firing_for", "annotations"} & set(rule):
        raise InfraConfigError(f"{where}: a recording rule takes no for/annotations")


def _check_group(group: Any, where: str) -> dict[str, Any]:
    """A rule group with a name and at least one valid rule."""
    if not isinstance(group, Mapping) or not group.get("name"):
        raise InfraConfigError(f"{where} needs a 'name'; {REGENERATE}")
    unknown = set(group) - GROUP_FIELDS
    if unknown:
        raise InfraConfigError(
            f"{where} ({group['name']}) has fields a PrometheusRule does not keep: "
            f"{sorted(unknown)}"
        )
    rules = group.get("rules")
    if not isinstance(rules, list) or not rules:
        raise InfraConfigError(f"{where} ({group['name']}) has no 'rules' list")
    for j, rule in enumerate(rules):
        _check_rule(rule, f"{where}.rules[{j}] ({group['name']})")
    return dict(group)


def parse_rule_groups(text: str, source: str) -> tuple[dict[str, Any], ...]:
    """Validated groups of a Prometheus rule file (`groups: [...]`); `source` names it in errors."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InfraConfigError(f"{source} is not valid YAML ({exc}); {REGENERATE}") from exc
    if not isinstance(doc, Mapping) or not isinstance(doc.get("groups"), list):
        raise InfraConfigError(f"{source} has no top-level 'groups' list; {REGENERATE}")
    if not doc["groups"]:
        raise InfraConfigError(f"{source} has no rule groups; {REGENERATE}")
    groups = tuple(
        _check_group(group, f"{source}: groups[{i}]") for i, group in enumerate(doc["groups"])
    )
    duplicates = _collisions([rule_object_name(g["name"]) for g in groups])
    if duplicates:
        raise InfraConfigError(
            f"{source}: group names collide as Kubernetes names: {duplicates}; rename the groups"
        )
    return groups


def load_rule_groups(path: Path) -> tuple[dict[str, Any], ...]:
    """The committed rule file's groups; a missing file says how to make it."""
    if not path.is_file():
        raise InfraConfigError(f"{path} does not exist; {REGENERATE}")
    return parse_rule_groups(path.read_text(), str(path))


def parse_dashboard(file_name: str, text: str) -> Dashboard:
    """A Grafana dashboard JSON document small enough for one ConfigMap."""
    if not _CONFIG_MAP_KEY.fullmatch(file_name):
        raise InfraConfigError(f"{file_name}: a ConfigMap key allows only letters, digits, -._")
    if len(text.encode()) > MAX_DASHBOARD_BYTES:
        raise InfraConfigError(
            f"{file_name} is larger than {MAX_DASHBOARD_BYTES} bytes and cannot fit a ConfigMap"
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InfraConfigError(f"{file_name} is not valid JSON ({exc}); {REGENERATE}") from exc
    if (
        not isinstance(doc, Mapping)
        or not doc.get("title")
        or not isinstance(doc.get("panels"), list)
    ):
        raise InfraConfigError(
            f"{file_name} is not a Grafana dashboard (needs 'title' and a 'panels' list)"
        )
    return Dashboard(file_name=file_name, title=str(doc["title"]), text=text)


def load_dashboards(directory: Path) -> tuple[Dashboard, ...]:
    """Every `*.json` dashboard in `directory`, in file-name order; none is an error."""
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise InfraConfigError(f"{directory} holds no *.json dashboards; {REGENERATE}")
    duplicates = _collisions([dashboard_object_name(path.name) for path in files])
    if duplicates:
        raise InfraConfigError(
            f"{directory}: dashboard file names collide as Kubernetes names: {duplicates}"
        )
    return tuple(parse_dashboard(path.name, path.read_text()) for path in files)
