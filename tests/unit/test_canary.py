"""Pure canary logic: sticky routing, PSI / Jensen-Shannon, SLIs from /metrics, step decisions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from mlre import canary

pytestmark = pytest.mark.unit

# The champion's score distribution every comparison starts from: its own seeded generator, so
# no test's draws depend on which tests ran before it.
BASE = np.random.default_rng(0).beta(2, 8, 5_000)

# Computed once (sha256 of str(key), first 8 bytes big-endian, mod 10 000) and written here: an
# entity's arm must not move between processes or releases, so a change of hash, key encoding or
# BUCKETS shows up as a failing test, not as customers silently switching models mid-canary.
GOLDEN_BUCKETS: dict[int | str, int] = {
    0: 6040,
    1: 2913,
    2: 2446,
    42: 2637,
    1_234_567: 7599,
    1_000_000_003: 4038,
    "customer-7": 5368,
    "abc": 74,
}


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator seeded per test: the same draws whatever ran before."""
    return np.random.default_rng(20260318)


def test_routing_is_sticky_monotone_and_close_to_the_share() -> None:
    keys = range(20_000)
    small = {k for k in keys if canary.in_canary(k, 0.05)}
    large = {k for k in keys if canary.in_canary(k, 0.25)}
    assert small <= large  # raising the share only adds entities
    assert abs(len(small) / 20_000 - 0.05) < 0.01
    assert abs(len(large) / 20_000 - 0.25) < 0.015
    assert not any(canary.in_canary(k, 0.0) for k in range(1_000))
    assert all(canary.in_canary(k, 1.0) for k in range(1_000))


@pytest.mark.parametrize(("key", "expected"), GOLDEN_BUCKETS.items())
def test_bucket_matches_its_golden_value(key: int | str, expected: int) -> None:
    assert canary.bucket(key) == expected
    assert canary.bucket(str(key)) == expected  # keys are hashed as text: 42 and "42" agree
    assert canary.in_canary(key, 0.25) == (expected < 2_500)


_CHILD_BUCKETS = """
import json, sys
from mlre import canary
keys = json.loads(sys.argv[1])
print(json.dumps([canary.bucket(k) for k in keys]))
"""


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_buckets_are_the_same_in_another_process_with_another_hash_seed(hash_seed: str) -> None:
    """Python's own hash() of str changes with PYTHONHASHSEED; the bucket must not."""
    keys = list(GOLDEN_BUCKETS)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD_BUCKETS, json.dumps(keys)],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == list(GOLDEN_BUCKETS.values())


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_share_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(canary.CanaryError, match="outside"):
        canary.check_share(bad)


@pytest.mark.parametrize(("text", "share"), [(None, 0.0), ("0.25", 0.25), ("x", 0.0), ("2", 0.0)])
def test_share_tag_parsing_never_raises(text: str | None, share: float) -> None:
    assert canary.parse_share(text) == share


def test_psi_and_js_are_small_for_same_distribution_large_for_a_shift(
    rng: np.random.Generator,
) -> None:
    same = rng.beta(2, 8, 5_000)
    shifted = np.clip(same + 0.3, 0, 1)
    assert canary.psi(BASE, same) < 0.05
    assert canary.psi(BASE, shifted) > 1.0
    assert canary.js_divergence(BASE, same) < 0.01
    assert 0.3 < canary.js_divergence(BASE, shifted) <= 1.0
    assert canary.psi(BASE, BASE) == pytest.approx(0.0, abs=1e-12)


def test_psi_survives_constant_reference_and_needs_data() -> None:
    assert canary.psi(np.full(100, 0.5), np.full(100, 0.5)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(canary.CanaryError):
        canary.psi([], [0.1])


METRICS = """# TYPE mlre_serving_predictions_total counter
mlre_serving_predictions_total{model_version="2",route="canary"} 98.0
mlre_serving_predictions_total{model_version="1",route="champion"} 900.0
# TYPE mlre_serving_errors_total counter
mlre_serving_errors_total{cause="model_error",model_version="2"} 2.0
# TYPE mlre_serving_request_latency_seconds histogram
mlre_serving_request_latency_seconds_bucket{le="0.005",model_version="2",route="canary"} 50.0
mlre_serving_request_latency_seconds_bucket{le="0.01",model_version="2",route="canary"} 99.0
mlre_serving_request_latency_seconds_bucket{le="0.05",model_version="2",route="canary"} 100.0
mlre_serving_request_latency_seconds_bucket{le="+Inf",model_version="2",route="canary"} 100.0
# TYPE mlre_serving_canary_share gauge
mlre_serving_canary_share 0.25
# TYPE mlre_serving_model_info gauge
mlre_serving_model_info{slot="champion",version="1"} 1.0
mlre_serving_model_info{slot="canary",version="2"} 1.0
mlre_serving_model_info{slot="canary",version="9"} 0.0
"""


def test_arm_stats_read_counts_errors_and_latency_from_metrics_text() -> None:
    stats = canary.arm_stats(METRICS, "2", "canary")
    assert stats.predictions == 98
    assert stats.error_rate == pytest.approx(0.02)
    assert stats.latency_quantile(0.5) == 0.005
    assert stats.latency_quantile(0.99) == 0.01
    delta = stats.minus(canary.ArmStats(predictions=48, errors=2, buckets=((0.005, 50.0),)))
    assert delta.predictions == 50
    assert delta.errors == 0
    assert canary.served_state(METRICS) == (0.25, {"champion": "1", "canary": "2"})


def _workers_text(second_share: float, second_canary: str) -> str:
    """Two workers' state gauges as prometheus_client's multiprocess mode labels them."""
    return f"""# TYPE mlre_serving_canary_share gauge
mlre_serving_canary_share{{pid="101"}} 0.25
mlre_serving_canary_share{{pid="102"}} {second_share}
# TYPE mlre_serving_model_info gauge
mlre_serving_model_info{{pid="101",slot="champion",version="1"}} 1.0
mlre_serving_model_info{{pid="101",slot="canary",version="2"}} 1.0
mlre_serving_model_info{{pid="102",slot="champion",version="1"}} 1.0
mlre_serving_model_info{{pid="102",slot="canary",version="{second_canary}"}} 1.0
"""


def test_served_state_of_several_workers_is_the_one_they_all_report() -> None:
    agreed = _workers_text(0.25, "2")
    assert canary.worker_states(agreed)["102"] == (0.25, {"champion": "1", "canary": "2"})
    assert canary.served_state(agreed) == (0.25, {"champion": "1", "canary": "2"})
    for mid_switch in (_workers_text(0.05, "2"), _workers_text(0.25, "9")):
        share, slots = canary.served_state(mid_switch)
        assert math.isnan(share)  # never equal to the share the canary waits for
        assert slots == {}
    assert canary.served_state("") == (0.0, {})


def _evidence(canary_scores: np.ndarray, canary_arm: canary.ArmStats | None = None):
    return canary.StepEvidence(
        share=0.05,
        champion_scores=BASE,
        canary_scores=canary_scores,
        champion=canary.ArmStats(),
        canary=canary_arm or canary.ArmStats(predictions=500),
    )


def test_healthy_step_passes_with_its_numbers(rng: np.random.Generator) -> None:
    decision = canary.decide_step(_evidence(rng.beta(2, 8, 2_000)), canary.CanaryThresholds())
    assert decision.healthy, decision.reasons
    assert decision.measures["psi"] < 0.2
    assert decision.row()["reasons"] == "all checks passed"


Scores = Callable[[np.random.Generator], np.ndarray]


@pytest.mark.parametrize(
    ("scores", "arm", "needle"),
    [
        (lambda rng: np.clip(rng.beta(2, 8, 2_000) + 0.3, 0, 1), None, "PSI"),
        (lambda rng: np.full(2_000, 0.1), None, "constant"),
        (lambda rng: rng.beta(2, 8, 2_000) * 1.5, None, "outside [0, 1]"),
        (
            lambda rng: rng.beta(2, 8, 2_000),
            canary.ArmStats(predictions=90, errors=10),
            "error rate",
        ),
        (
            lambda rng: rng.beta(2, 8, 2_000),
            canary.ArmStats(predictions=100, buckets=((0.01, 0.0), (0.25, 100.0))),
            "p99 latency",
        ),
    ],
    ids=["psi", "constant", "out-of-range", "error-rate", "p99-latency"],
)
def test_each_breach_fails_the_step_and_says_why(
    scores: Scores, arm: canary.ArmStats | None, needle: str, rng: np.random.Generator
) -> None:
    decision = canary.decide_step(_evidence(scores(rng), arm), canary.CanaryThresholds())
    assert not decision.healthy
    assert any(needle in reason for reason in decision.reasons), decision.reasons


@pytest.mark.parametrize("steps", [[], [0.5, 0.25], [0.0, 0.5], [0.1, 0.1]])
def test_steps_must_increase(steps: list[float]) -> None:
    with pytest.raises(canary.CanaryError):
        canary.check_steps(steps)
