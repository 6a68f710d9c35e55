"""Configuration of the local monitoring stack: what Prometheus scrapes and evaluates, where
Alertmanager sends alerts, and the command lines of Debian's three servers.

Pure rendering (settings and a `MonitoringSetup` in, dicts and YAML out) plus one writer; the
processes themselves are started by `mlre.local_platform` through the one supervisor. Not to be
confused with `mlre.monitoring`, the model-performance monitoring of `monitor-performance`.

- Prometheus scrapes the prediction service (job `mlre-serving`) and the Pushgateway (job
  `mlre-pushgateway`, `honor_labels: true`, so the `job` and grouping labels a flow pushed stay
  as pushed), loads the generated SLO rules and sends alerts to the Alertmanager.
- Alertmanager routes `severity=page` and `severity=ticket` to the webhook receiver
  (`alert_webhook_url`, else the local alert relay with its bearer token); with neither they go
  to receivers that drop them.
- The drill profile (`DRILL`) evaluates every second and notifies within about a second, for the
  live SLO drill whose rule windows are scaled down by the same factor.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mlre.atomic import write_atomic
from mlre.errors import PlatformError
from mlre.k8s_labels import SERVING_SCRAPE_JOB
from mlre.relay_config import relay_url, token_file
from mlre.serving_config import ServingConfig
from mlre.settings import PROJECT_ROOT, Settings
from mlre.slo.outputs import LOCAL_RULES_FILE

SERVING_JOB = SERVING_SCRAPE_JOB
PUSHGATEWAY_JOB = "mlre-pushgateway"
# Written by `mlre slo generate` (mlre.slo.outputs); Prometheus treats a rule file that does not
# exist yet as a glob matching nothing, so the config may point at it before it is generated.
LOCAL_SLO_RULES = PROJECT_ROOT / LOCAL_RULES_FILE

PAGE_RECEIVER = "page"
TICKET_RECEIVER = "ticket"
NULL_RECEIVER = "null"

# The servers in start order (Prometheus last: it talks to the other two), their Debian
# executables, and those that re-read their config on SIGHUP.
SERVERS = ("pushgateway", "alertmanager", "prometheus")
EXECUTABLES = {
    "pushgateway": "prometheus-pushgateway",
    "alertmanager": "prometheus-alertmanager",
    "prometheus": "prometheus",
}
RELOADABLE = frozenset({"alertmanager", "prometheus"})
AMTOOL = "amtool"
PROMTOOL = "promtool"
DEBIAN_PACKAGES = ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway")
INSTALL_HINT = "apt-get install --no-install-recommends " + " ".join(DEBIAN_PACKAGES)


@dataclass(frozen=True)
class Timing:
    """How often Prometheus scrapes and evaluates, and how fast Alertmanager notifies."""

    scrape_interval_s: float
    evaluation_interval_s: float
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    # Prometheus re-sends a still-firing alert this often (--rules.alert.resend-delay).
    resend_delay_s: float


# Prometheus' and Alertmanager's usual values: 15 s scrapes; a new alert group waits 30 s for
# company, changes are sent every 5 min, a page that still fires is repeated every 4 h.
STANDARD = Timing(
    scrape_interval_s=15,
    evaluation_interval_s=15,
    group_wait_s=30,
    group_interval_s=300,
    repeat_interval_s=4 * 3600,
    resend_delay_s=60,
)
# The live drill: everything within about a second (rule windows are scaled down separately).
DRILL = Timing(
    scrape_interval_s=1,
    evaluation_interval_s=1,
    group_wait_s=1,
    group_interval_s=1,
    repeat_interval_s=3600,
    resend_delay_s=1,
)


@dataclass(frozen=True)
class MonitoringSetup:
    """What a local Prometheus is configured with beyond the settings.

    `serving_targets` are host:port of prediction services (default: the one `python -m serving`
    starts with the current `MLRE_SERVING_*` settings).
    """

    timing: Timing = STANDARD
    rule_files: tuple[Path, ...] = (LOCAL_SLO_RULES,)
    serving_targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MonitoringFiles:
    """Where the generated configs and each server's data live, under `settings.monitoring_dir`."""

    root: Path

    @property
    def prometheus_config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def alertmanager_config(self) -> Path:
        return self.root / "alertmanager.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus"

    @property
    def alertmanager_data(self) -> Path:
        return self.root / "alertmanager"

    @property
    def pushgateway_data(self) -> Path:
        return self.root / "pushgateway" / "metrics.data"


def files(settings: Settings) -> MonitoringFiles:
    """The monitoring paths of a platform home."""
    return MonitoringFiles(settings.monitoring_dir.resolve())


# ---- rendering -------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A Prometheus/Alertmanager duration in its largest whole unit (4h, 5m, 15s, 250ms)."""
    millis = max(round(seconds * 1000), 1)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def host_port(url: str) -> str:
    """`host:port` of an http(s) URL, the form Prometheus' static targets take."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        raise PlatformError(f"cannot read host:port from {url!r}; give a URL like http://h:9091.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _static(targets: list[str] | tuple[str, ...], scheme: str = "http") -> dict[str, Any]:
    return {"scheme": scheme, "static_configs": [{"targets": list(targets)}]}


def serving_targets(settings: Settings, setup: MonitoringSetup) -> tuple[str, ...]:
    """host:port of the prediction services Prometheus scrapes."""
    if setup.serving_targets is not None:
        return setup.serving_targets
    return (f"{settings.host}:{ServingConfig().port}",)


def prometheus_config(settings: Settings, setup: MonitoringSetup) -> dict[str, Any]:
    """prometheus.yml as a dict: the service, the Pushgateway, the SLO rules, the Alertmanager."""
    timing = setup.timing
    scrape_configs: list[dict[str, Any]] = [
        {
            "job_name": SERVING_JOB,
            "metrics_path": "/metrics",
            **_static(serving_targets(settings, setup)),
        }
    ]
    if settings.pushgateway_endpoint:
        gateway = urlsplit(settings.pushgateway_endpoint)
        scrape_configs.append(
            {
                "job_name": PUSHGATEWAY_JOB,
                # Keep `job="mlre-flows"` and the grouping labels as the flows pushed them.
                "honor_labels": True,
                "metrics_path": f"{gateway.path.rstrip('/')}/metrics",
                **_static([host_port(settings.pushgateway_endpoint)], gateway.scheme or "http"),
            }
        )
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": duration(timing.scrape_interval_s),
            "scrape_timeout": duration(min(timing.scrape_interval_s, 10)),
            "evaluation_interval": duration(timing.evaluation_interval_s),
        },
        "rule_files": [str(path) for path in setup.rule_files],
        "scrape_configs": scrape_configs,
    }
    if settings.alertmanager_endpoint:
        manager = urlsplit(settings.alertmanager_endpoint)
        config["alerting"] = {
            "alertmanagers": [
                {
                    "path_prefix": manager.path.rstrip("/") or "/",
                    **_static(
                        [host_port(settings.alertmanager_endpoint)], manager.scheme or "http"
                    ),
                }
            ]
        }
    return config


def alert_webhook(settings: Settings) -> dict[str, Any] | None:
    """The webhook page and ticket alerts go to: `alert_webhook_url` as given, else the local
    alert relay with its bearer token (a file Alertmanager reads), else None (dropped)."""
    if settings.alert_webhook_url:
        return {"url": settings.alert_webhook_url, "send_resolved": True}
    if not (settings.monitoring and settings.alert_relay):
        return None
    return {
        "url": relay_url(settings),
        "send_resolved": True,
        "http_config": {
            "authorization": {"type": "Bearer", "credentials_file": str(token_file(settings))}
        },
    }


def alertmanager_config(settings: Settings, setup: MonitoringSetup) -> dict[str, Any]:
    """alertmanager.yml as a dict: page and ticket alerts to the webhook, the rest dropped."""
    timing = setup.timing
    webhook = alert_webhook(settings)

    def receiver(name: str) -> dict[str, Any]:
        if webhook is None:
            return {"name": name}  # no integration: Alertmanager drops what it routes here
        return {"name": name, "webhook_configs": [webhook]}

    return {
        "route": {
            "receiver": NULL_RECEIVER,
            # One notification per alert, severity and SLO (the generated rules' Sloth labels).
            "group_by": ["alertname", "severity", "sloth_service", "sloth_slo"],
            "group_wait": duration(timing.group_wait_s),
            "group_interval": duration(timing.group_interval_s),
            "repeat_interval": duration(timing.repeat_interval_s),
            "routes": [
                {"matchers": ['severity="page"'], "receiver": PAGE_RECEIVER},
                {"matchers": ['severity="ticket"'], "receiver": TICKET_RECEIVER},
            ],
        },
        "receivers": [{"name": NULL_RECEIVER}, receiver(PAGE_RECEIVER), receiver(TICKET_RECEIVER)],
    }


def render(config: dict[str, Any]) -> str:
    """YAML as a person would write it (keys in the order given)."""
    header = "# Generated by mlre (mlre/monitoring_config.py); `mlre up` rewrites it.\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_configs(settings: Settings, setup: MonitoringSetup) -> MonitoringFiles:
    """Write prometheus.yml and alertmanager.yml and create the data folders; the paths."""
    paths = files(settings)
    for folder in (paths.prometheus_data, paths.alertmanager_data, paths.pushgateway_data.parent):
        folder.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.prometheus_config, render(prometheus_config(settings, setup)))
    write_atomic(paths.alertmanager_config, render(alertmanager_config(settings, setup)))
    return paths


# ---- the servers' command lines --------------------------------------------------------------


def find_binary(name: str) -> str | None:
    """The absolute path of a monitoring binary on PATH, or None."""
    return shutil.which(name)


def server_argv(
    name: str, binary: str, settings: Settings, setup: MonitoringSetup | None = None
) -> tuple[str, ...]:
    """The command line of one of SERVERS, `binary` being its executable."""
    setup = setup or MonitoringSetup()
    if name == "prometheus":
        return prometheus_argv(binary, settings, setup)
    if name == "alertmanager":
        return alertmanager_argv(binary, settings)
    if name == "pushgateway":
        return pushgateway_argv(binary, settings)
    raise PlatformError(f"unknown monitoring server {name!r}; one of {', '.join(SERVERS)}.")


def prometheus_argv(binary: str, settings: Settings, setup: MonitoringSetup) -> tuple[str, ...]:
    paths = files(settings)
    return (
        binary,
        f"--config.file={paths.prometheus_config}",
        f"--storage.tsdb.path={paths.prometheus_data}",
        f"--web.listen-address={settings.host}:{settings.prometheus_port}",
        # POST /-/reload (and SIGHUP) re-reads the config and the SLO rules.
        "--web.enable-lifecycle",
        f"--rules.alert.resend-delay={duration(setup.timing.resend_delay_s)}",
    )


def alertmanager_argv(binary: str, settings: Settings) -> tuple[str, ...]:
    paths = files(settings)
    return (
        binary,
        f"--config.file={paths.alertmanager_config}",
        f"--storage.path={paths.alertmanager_data}",
        f"--web.listen-address={settings.host}:{settings.alertmanager_port}",
        # A single instance: no gossip port (it would bind 0.0.0.0:9094 by default).
        "--cluster.listen-address=",
    )


def pushgateway_argv(binary: str, settings: Settings) -> tuple[str, ...]:
    return (
        binary,
        f"--web.listen-address={settings.host}:{settings.pushgateway_port}",
        # Pushed SLIs survive a restart of the Pushgateway.
        f"--persistence.file={files(settings).pushgateway_data}",
        "--persistence.interval=30s",
    )
