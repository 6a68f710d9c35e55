"""SLOs as code: specs (`slos/*.yaml`) -> Prometheus rules, Grafana dashboards, promtool tests.

- `spec`: the validated spec models and `load_specs`;
- `rules`: Sloth-compatible recording rules and multi-window multi-burn-rate alerts;
- `dashboards`: one Grafana dashboard per service;
- `outputs`: the committed files `mlre slo generate` writes;
- `rule_tests`: promtool unit tests generated from the specs (every alert, every tier).
"""

from __future__ import annotations

from mlre.slo.rules import generate_rules, render_rules, write_rules
from mlre.slo.spec import SloSpec, load_specs

__all__ = ["SloSpec", "generate_rules", "load_specs", "render_rules", "write_rules"]
