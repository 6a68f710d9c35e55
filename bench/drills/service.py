"""Serving drills: the prediction service under load, on a Redis online store.

Each drill starts Redis (append-only file), a feature repository on it with the daily view
materialized, a model with two versions (champion: the first), `python -m serving` on the port
the drill Prometheus scrapes, logging into the platform's lake, and 20 req/s of open-loop load.

- redis-killed-under-load: Redis is SIGKILLed. The service keeps answering from its fallbacks, so
  the availability SLO pages; `remediate/rollback-canary` finds no canary to roll back and
  escalates (the designed outcome: no automatic action brings a feature store back). The person
  paged restarts Redis (same port and data), the model answers again, the SLI recovers.
- diverging-canary: `canary-rollout` sends half the traffic to a challenger whose scores are
  shifted by +3 log-odds. No serving SLO burns (every request is answered in time); the canary's
  own step check (PSI / Jensen-Shannon of canary vs champion scores) is the detector, and the
  rollout rolls the challenger back itself: share 0, champion unchanged, audited.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.drills.platform import (
    DrillPlatform,
    DrillResult,
    final_state,
    follow,
)
from mlre.settings import Settings
from mlre.waiting import wait_until

RATE = 20.0  # req/s: enough for a ratio every scrape, light enough for two cores
LOAD_S = 900.0  # the schedule outlasts the drill; the generator is stopped when it is done
SLI = 'mlre_serving_predictions_total{job="mlre-serving"'  # a selector still open for more labels
AVAILABILITY = {"sloth_id": "serving-availability"}
CANARY = "canary-rollout/on-demand"
DIVERGENCE_LOG_ODDS = 3.0


@dataclass
class ServiceUnderLoad:
    """The service of one drill; `answered` and `logged` are filled when it has stopped."""

    settings: Settings
    redis: Any
    versions: list[str]
    features: Any  # what tests.integration.test_serving.register_model fits a model on
    answered: int = 0
    logged: dict[str, int] = field(default_factory=dict)

    @property
    def log_complete(self) -> bool:
        """Every answer the service counted is one row of the prediction log."""
        return self.logged.get("rows") == self.answered == self.logged.get("unique_request_ids")

    def log_note(self) -> str:
        return f"{self.answered} answers, {self.logged.get('rows')} rows in the prediction log"


@contextlib.contextmanager
def service_under_load(p: DrillPlatform, name: str) -> Iterator[ServiceUnderLoad]:
    """Redis, the repo and model, `python -m serving` and the load, stopped in reverse order."""
    from mlflow import MlflowClient

    from bench.serving import _prepare, _serving_process
    from bench.soak import PersistentRedis, SoakConfig, _loadgen, logged_rows
    from tests.support.servers import run_dir

    root = p.settings.home / name
    redis = PersistentRedis(data_dir=run_dir(root) / "redis")
    redis.start()
    try:
        p.echo("a Redis online store, materialized, and a champion for the service ...")
        settings, (_, versions, features) = _prepare(
            root, redis.connection_string, p.settings.mlflow_tracking_uri
        )
        lake = str(p.settings.lake_dir)  # one lake: the flows read what the service logs
        settings = settings.model_copy(update={"prediction_log_uri": lake})
        MlflowClient(p.settings.mlflow_tracking_uri).set_registered_model_alias(
            settings.model_name, "champion", versions[0]
        )
        service = ServiceUnderLoad(settings, redis, versions, features)
        url = f"http://{p.settings.host}:{p.serving_port}/predict"
        extra = {"MLRE_PREDICTION_LOG_URI": lake}
        with (
            _serving_process(settings, p.serving_port, root / "serving.log", extra),
            (root / "load.log").open("wb") as log,
        ):
            load = _loadgen(url, SoakConfig(rate=RATE, duration_s=LOAD_S), time.time(),
                            root / "load.json", log, id_prefix=name)  # fmt: skip
            try:
                p.echo(f"load at {RATE:g} req/s; waiting for Prometheus to see the model answer")
                wait_until(
                    lambda: p.query(f'sum(rate({SLI}, route!="fallback"}}[5s])) > 0'),
                    timeout_s=120, what="the service's answers in Prometheus", interval_s=1,
                )  # fmt: skip
                yield service
            finally:
                load.terminate()
                load.wait(timeout=60)
            service.answered = _settled_answers(p.serving_port)
        # The service flushed its prediction log on SIGTERM.
        service.logged = logged_rows(settings, name)  # this drill's requests only
    finally:
        redis.stop()


def redis_killed_under_load(p: DrillPlatform) -> DrillResult:
    """Redis SIGKILLed under load -> fallbacks -> availability page -> escalation -> restart."""
    result = DrillResult(
        "redis-killed-under-load",
        f"the Redis online store SIGKILLed while the service answers {RATE:g} req/s",
        "ServingAvailabilityBudgetBurn (page)",
        expected="escalated",
    )
    with service_under_load(p, "redis-drill") as service:
        keys_before = service.redis.keys()
        service.redis.kill()
        began = time.monotonic()
        p.echo(f"Redis SIGKILLed ({keys_before} keys); the service falls back ...")

        def operator_restarts_redis() -> None:  # what the escalation's runbook says
            p.echo("  paged and escalated: restarting Redis (runbook) ...")
            service.redis.start()

        healthy = f'sum(rate({SLI}, route="fallback"}}[5s])) == 0'
        follow(p, result, alert="ServingAvailabilityBudgetBurn", action="rollback-canary",
               labels=AVAILABILITY, healthy=healthy, began=began,
               then=operator_restarts_redis)  # fmt: skip
        keys_after = service.redis.keys()
    result.nothing_lost = keys_after == keys_before and service.log_complete
    result.notes.append(f"Redis keys {keys_before} -> {keys_after}; {service.log_note()}")
    return result


def diverging_canary(p: DrillPlatform) -> DrillResult:
    """A challenger with shifted scores under a canary -> step check -> the canary's rollback."""
    from mlflow import MlflowClient

    from flows import deploy
    from mlre import registry
    from mlre.canary import CANARY_ROLLBACK_ACTION
    from tests.integration.test_serving import register_model

    result = DrillResult(
        "diverging-canary",
        f"canary-rollout of a challenger whose scores are shifted by +{DIVERGENCE_LOG_ODDS:g} "
        "log-odds, at a 50 % share",
        "canary step check (PSI / JS of scores; no serving SLO burns)",
    )
    client = MlflowClient(p.settings.mlflow_tracking_uri)
    with service_under_load(p, "canary-drill") as service:
        model, champion = service.settings.model_name, service.versions[0]
        challenger = register_model(
            service.features, p.settings.mlflow_tracking_uri, model,
            seed=2, shift=DIVERGENCE_LOG_ODDS,
        )  # fmt: skip
        params = {
            "model_name": model,
            "version": challenger,
            "steps": [0.5],
            "min_predictions": 100,
            "metrics_url": f"http://{p.settings.host}:{p.serving_port}/metrics",
            # The service started a minute ago: its serving budgets (windows scaled 60x) are
            # measured on its start-up requests. The override is audited like any other.
            "override_budget_policy": True,
            "override_reason": "chaos drill: budgets of a service started a minute ago",
        }
        began = time.monotonic()
        run = deploy.trigger(CANARY, {"params": params})
        p.echo(f"{CANARY} ({run.name}): v{challenger} at 50 % next to champion v{champion} ...")
        result.remediation = f"{CANARY} ({run.name}): its own rollback"
        result.run_state = final_state(run.id)
        history = registry.history(client, model)
        record = history[-1] if history else None
        rolled_back = (
            record is not None
            and record.action == CANARY_ROLLBACK_ACTION
            and record.to_version == challenger
        )
        result.alert_fired = rolled_back and record.reason.startswith("step 1")
        result.alert_after_s = round(time.monotonic() - began, 1)
        result.outcome = "remediated" if rolled_back else "?"
        reason = record.reason if record else "no audit record"
        p.echo(f"  {result.run_state}: {record.action if record else '-'} ({reason[:160]})")
        canary_gone = f'sum(rate({SLI}, route="canary"}}[5s])) == 0'
        with contextlib.suppress(Exception):
            wait_until(lambda: p.query(canary_gone), timeout_s=120, what="no canary answers")
            result.sli_recovered = True
            result.recovered_after_s = round(time.monotonic() - began, 1)
        champion_after = registry.champion_version(client, model)
    result.nothing_lost = (
        champion_after is not None and str(champion_after.version) == champion
    ) and service.log_complete
    result.notes.append(f"{reason[:300]}; {service.log_note()}")
    return result


def _settled_answers(port: int) -> int:
    """Instances the service answered, once no request is in flight (two equal scrapes)."""
    from bench.soak import scrape_counters

    def total() -> int:
        counted = scrape_counters(port, ["mlre_serving_predictions"])["mlre_serving_predictions"]
        return int(sum(counted.values()))

    seen = [total()]

    def settled() -> int | None:
        seen.append(total())
        return seen[-1] if seen[-1] == seen[-2] else None

    return wait_until(settled, timeout_s=30, what="the last answers", interval_s=1)
