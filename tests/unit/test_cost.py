"""Estimated run cost: wall time times the node type's (estimated) hourly price."""

from __future__ import annotations

import pytest
import yaml

from infra.config import parse_gpu_pool
from mlre.cost import cost_rows, estimate_cost, total_usd
from mlre.settings import ESTIMATED_HOURLY_USD, PROJECT_ROOT, Settings

pytestmark = pytest.mark.unit
PRICES = {"g5.xlarge": 1.0, "t3.large": 0.1}


def test_an_hour_on_a_priced_node_costs_its_hourly_price() -> None:
    estimate = estimate_cost(1800.0, "g5.xlarge", PRICES)
    assert estimate.usd == pytest.approx(0.5)
    assert estimate.hourly_usd == 1.0
    assert estimate.label == "$0.5000 (est., 1800.0 s on g5.xlarge at $1.000/h)"


@pytest.mark.parametrize("instance_type", ["", "p5.48xlarge"])
def test_an_unknown_node_type_gets_no_figure_never_zero(instance_type: str) -> None:
    estimate = estimate_cost(60.0, instance_type, PRICES)
    assert estimate.usd is None
    assert estimate.label.startswith("not estimated (60.0 s on ")


def test_negative_seconds_are_refused() -> None:
    with pytest.raises(ValueError, match="seconds"):
        estimate_cost(-1.0, "g5.xlarge", PRICES)


def test_cost_rows_sum_known_stages_and_say_when_nothing_is_known() -> None:
    rows = cost_rows({"train": 3600.0, "evaluate": 360.0}, "t3.large", PRICES)
    assert rows[-1] == {"stage": "total", "seconds": "3960.0", "estimated_usd": "0.1100"}
    unknown = cost_rows({"train": 10.0}, "", PRICES)
    assert unknown[-1]["estimated_usd"].startswith("unknown")
    assert total_usd([]) is None


def _stack_instance_types() -> set[str]:
    """Every node instance type the committed Pulumi stacks (and their defaults) may start."""
    types: set[str] = set()
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml"):
        document = yaml.safe_load((PROJECT_ROOT / name).read_text())
        for key, entry in document.get("config", {}).items():
            value = entry.get("default", entry) if isinstance(entry, dict) else entry
            if key.endswith("systemInstanceTypes"):
                types |= set(value)
            elif key.endswith("gpuPools"):
                types |= {t for spec in value for t in parse_gpu_pool(spec).instance_types}
    return types


def test_every_instance_type_the_stacks_use_has_an_estimated_price() -> None:
    types = _stack_instance_types()
    assert types, "no instance types found in the Pulumi stack files"
    assert types <= set(ESTIMATED_HOURLY_USD), sorted(types - set(ESTIMATED_HOURLY_USD))


def test_prices_can_be_overridden_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRE_INSTANCE_HOURLY_USD", '{"g5.xlarge": 0.42}')
    monkeypatch.setenv("MLRE_INSTANCE_TYPE", "g5.xlarge")
    settings = Settings()
    assert estimate_cost(3600, settings.instance_type, settings.instance_hourly_usd).usd == 0.42
