"""The SLO drill, live: the prediction service (production profile: Redis online store, SQL
registry) under a small steady load, scraped by a real Prometheus that evaluates the generated
SLO rules with every window divided by TIME_SCALE; Redis stops, the availability SLI falls, the
availability PAGE reaches Alertmanager and Alertmanager posts it to a webhook this test runs;
Redis comes back, the SLI recovers and the alert resolves.

Every step waits for an event with a deadline; nothing asserts on elapsed time. How long the
page took is printed (`-s`) as information.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient

from mlre.settings import PROJECT_ROOT
from mlre.slo.outputs import DEFAULT_RUNBOOK_BASE_URL
from mlre.slo.rules import render_rules
from mlre.slo.spec import load_specs
from mlre.supervisor import free_port
from mlre.waiting import wait_until
from tests.integration.conftest import build_feature_env, recent_config
from tests.integration.test_monitoring_stack import monitoring_stack, served
from tests.integration.test_serving import customers, materialize, random_instances, register_model
from tests.support.browser import rendered_dom, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

# The rules' windows divided by 60: the page tier's 1h and 5m windows become 60 s and 5 s, so the
# page fires seconds into the outage; 5 s still holds five 1-second scrapes.
TIME_SCALE = 60
PAGE_ALERT = "ServingAvailabilityBudgetBurn"
AVAILABILITY = 'sloth_service="serving",sloth_slo="availability"'
LOAD_INTERVAL_S = 0.05  # ~20 requests a second, one instance each
ALERT_TIMEOUT_S = 240.0  # the page comes in seconds; the deadline only bounds a broken drill
SERIES_TIMEOUT_S = 120.0


@dataclass
class Webhook:
    """A tiny Alertmanager webhook receiver on 127.0.0.1: every POST body, in order."""

    server: ThreadingHTTPServer
    posts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def alerts(
        self, name: str, severity: str, status: str, since: datetime
    ) -> list[tuple[str, dict[str, Any]]]:
        """(receiver, alert) of every alert named `name` with `severity` posted with `status`
        that started after `since`."""
        with self.lock:
            posts = list(self.posts)
        return [
            (post["receiver"], alert)
            for post in posts
            for alert in post["alerts"]
            if alert["labels"].get("alertname") == name
            and alert["labels"].get("severity") == severity
            and alert["status"] == status
            and datetime.fromisoformat(alert["startsAt"]) > since
        ]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    posts: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                posts.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Webhook(server, posts, lock)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Load:
    """A steady trickle of /predict calls from a thread; every status code it got."""

    base: str
    keys: list[int]
    statuses: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = np.random.default_rng(5)
        with httpx.Client(base_url=self.base, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    response = http.post(
                        "/predict", json={"instances": random_instances(self.keys, 1, rng)}
                    )
                    self.statuses.append(response.status_code)
                except httpx.HTTPError:
                    self.statuses.append(-1)  # no answer at all: fails the drill at the end
                self.stop.wait(LOAD_INTERVAL_S)  # pacing, not synchronisation


@contextmanager
def steady_load(base: str, keys: list[int]) -> Iterator[Load]:
    """Run a Load in a thread for the block."""
    load = Load(base, keys)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(timeout=30)


def _champion_loaded(base: str, version: str) -> bool:
    """The service has loaded `version` as champion (read from its /metrics, no prediction, so
    no fallback answer is counted before the drill starts)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return f'mlre_serving_model_info{{slot="champion",version="{version}"}} 1.0' in text


@dataclass(frozen=True)
class Drilled:
    """The service's environment: a production-profile store with a champion model."""

    env: dict[str, str]
    keys: list[int]
    version: str


@pytest.fixture
def champion_on_redis(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, mlflow_server
) -> Drilled:
    """A materialized Redis store (session Redis, PostgreSQL SQL registry) and a champion."""
    env = build_feature_env(
        tmp_path_factory, "production", recent_config(days=8, n_customers=200), request
    )
    materialize(env)
    model = f"drill-{uuid.uuid4().hex[:8]}"
    version = register_model(env, mlflow_server.tracking_uri, model)
    MlflowClient(mlflow_server.tracking_uri).set_registered_model_alias(model, "champion", version)
    service_env = {
        "MLRE_HOME": str(env.settings.home),
        "MLRE_STORE_PROFILE": "production",
        "MLRE_REDIS_CONNECTION_STRING": env.settings.redis_connection_string,
        "MLRE_REGISTRY_URI": env.settings.registry_uri,
        "MLRE_MLFLOW_URI": mlflow_server.tracking_uri,
        "MLRE_MODEL_NAME": model,
        "MLRE_SERVING_POLL_INTERVAL_S": "1",
    }
    return Drilled(service_env, customers(env), version)


def test_redis_outage_pages_through_alertmanager_and_resolves(
    tmp_path: Path, champion_on_redis: Drilled, redis_server, webhook: Webhook
) -> None:
    drilled = champion_on_redis
    # The same rules `mlre slo generate` writes, time divided by TIME_SCALE.
    rules = tmp_path / "slo-rules.drill.yaml"
    rules.write_text(
        render_rules(
            load_specs(PROJECT_ROOT / "slos"),
            time_scale=TIME_SCALE,
            runbook_base_url=DEFAULT_RUNBOOK_BASE_URL,
            include_cloud=False,
        )
    )
    serving_port = free_port()

    with (
        served(drilled.env, serving_port, tmp_path / "serving.log") as base,
        monitoring_stack(
            tmp_path / "home",
            serving_port=serving_port,
            rule_files=(rules,),
            webhook_url=webhook.url,
        ) as stack,
    ):
        wait_until(
            lambda: _champion_loaded(base, drilled.version), timeout_s=SERIES_TIMEOUT_S,
            what="the champion loaded", interval_s=0.2,
        )  # fmt: skip
        stack.wait_for(f"slo:objective:ratio{{{AVAILABILITY}}}", "the SLO rules evaluated")
        with steady_load(base, drilled.keys) as load:
            # Before: the SLI is measured and every answer is the champion's.
            stack.wait_for(
                f"slo:sli_error:ratio_rate5m{{{AVAILABILITY}}} == 0",
                "the availability SLI at 0 errors",
                timeout_s=SERIES_TIMEOUT_S,
            )
            assert not stack.query(f'ALERTS{{alertname="{PAGE_ALERT}"}}')

            outage = datetime.now(UTC)
            began = time.monotonic()
            redis_server.stop()
            try:
                stack.wait_for(
                    f"slo:sli_error:ratio_rate5m{{{AVAILABILITY}}} > 0.5",
                    "the availability SLI falling",
                    timeout_s=SERIES_TIMEOUT_S,
                )
                paged = wait_until(
                    lambda: webhook.alerts(PAGE_ALERT, "page", "firing", outage),
                    timeout_s=ALERT_TIMEOUT_S,
                    what=f"{PAGE_ALERT} posted by Alertmanager",
                    interval_s=0.1,
                )
                page_s = time.monotonic() - began
            finally:
                redis_server.start()
            back = time.monotonic()

            receiver, alert = paged[0]
            assert receiver == "page"  # routed by severity=page to the page receiver
            assert alert["labels"]["severity"] == "page"
            assert alert["labels"]["sloth_slo"] == "availability"
            assert alert["annotations"]["runbook_url"] == (
                f"{DEFAULT_RUNBOOK_BASE_URL}/{PAGE_ALERT}.md"
            )
            # Alertmanager holds it too (its own API, not only what it posted).
            held = httpx.get(f"{stack.settings.alertmanager_endpoint}/api/v2/alerts", timeout=10)
            assert PAGE_ALERT in {a["labels"]["alertname"] for a in held.json()}
            # What the person on call sees: Prometheus' alerts page, rendered in real Chromium
            # (MLRE_SCREENSHOT_DIR keeps the picture; the README's comes from here). Debian's
            # package ships the classic UI only (/classic/...; the React UI answers 404).
            alerts_page = f"{stack.settings.prometheus_endpoint}/classic/alerts"
            dom = rendered_dom(alerts_page)
            assert PAGE_ALERT in dom
            assert "firing" in dom.lower()
            shots = Path(os.environ.get("MLRE_SCREENSHOT_DIR") or tmp_path)
            picture = shots / "prometheus-alerts-drill.png"
            assert screenshot(alerts_page, picture, height=2400).stat().st_size

            # After: the SLI recovers and Alertmanager posts the resolution.
            stack.wait_for(
                f"slo:sli_error:ratio_rate5m{{{AVAILABILITY}}} == 0",
                "the availability SLI recovering",
                timeout_s=SERIES_TIMEOUT_S,
            )
            wait_until(
                lambda: webhook.alerts(PAGE_ALERT, "page", "resolved", outage),
                timeout_s=ALERT_TIMEOUT_S,
                what=f"{PAGE_ALERT} resolved",
                interval_s=0.1,
            )
            resolve_s = time.monotonic() - back
    assert set(load.statuses) == {200}  # a store outage is never a 5xx
    print(
        f"\ndrill (time_scale {TIME_SCALE}): page at the webhook {page_s:.1f} s after Redis "
        f"stopped; resolved {resolve_s:.1f} s after it was back; {len(load.statuses)} requests"
    )
