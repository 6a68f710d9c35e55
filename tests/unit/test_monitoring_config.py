"""The local monitoring stack's configuration: endpoints from settings, prometheus.yml and
alertmanager.yml as rendered, checked by Debian's own `promtool` and `amtool`, and the specs
`mlre up` starts the three servers from."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlre import local_platform, monitoring_config
from mlre.monitoring_config import DRILL, MonitoringSetup
from mlre.settings import Settings

pytestmark = pytest.mark.unit

WEBHOOK = "http://127.0.0.1:5001/alerts"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        prometheus_port=19090,
        alertmanager_port=19093,
        pushgateway_port=19091,
        monitoring=True,
        alert_webhook_url="",
        pushgateway_url="",
        prometheus_url="",
        alertmanager_url="",
    )


def _tool(name: str) -> str:
    """A Debian monitoring tool, or a failure that says how to get it (never a skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: `sudo {monitoring_config.INSTALL_HINT}` (or `make "
            "monitoring`, which installs it when run as root)."
        )
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _job(config: dict, name: str) -> dict:
    return next(job for job in config["scrape_configs"] if job["job_name"] == name)


# ---- settings --------------------------------------------------------------------------------


def test_endpoints_default_to_the_local_servers(settings: Settings) -> None:
    assert settings.prometheus_endpoint == "http://127.0.0.1:19090"
    assert settings.alertmanager_endpoint == "http://127.0.0.1:19093"
    assert settings.pushgateway_endpoint == "http://127.0.0.1:19091"
    assert settings.monitoring_dir == settings.home / "monitoring"


def test_remote_urls_win_and_monitoring_off_means_none(settings: Settings) -> None:
    remote = settings.model_copy(
        update={
            "prometheus_url": "https://prom.example.com/",
            "pushgateway_url": "https://push.example.com:9443/gw/",
            "monitoring": False,
        }
    )
    assert remote.prometheus_endpoint == "https://prom.example.com"
    assert remote.pushgateway_endpoint == "https://push.example.com:9443/gw"
    assert remote.alertmanager_endpoint == ""  # not remote, and no local one when off


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLRE_PUSHGATEWAY_PORT", "29091")
    monkeypatch.setenv("MLRE_MONITORING", "false")
    monkeypatch.setenv("MLRE_ALERT_WEBHOOK_URL", WEBHOOK)
    read = Settings(home=tmp_path)
    assert (read.pushgateway_port, read.monitoring, read.alert_webhook_url) == (
        29091,
        False,
        WEBHOOK,
    )
    assert read.pushgateway_endpoint == ""


# ---- prometheus.yml --------------------------------------------------------------------------


def test_prometheus_scrapes_the_service_and_the_pushgateway(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLRE_SERVING_PORT", "18000")
    config = monitoring_config.prometheus_config(settings, MonitoringSetup())

    serving = _job(config, "mlre-serving")
    assert serving["static_configs"] == [{"targets": ["127.0.0.1:18000"]}]
    assert serving["metrics_path"] == "/metrics"
    gateway = _job(config, "mlre-pushgateway")
    assert gateway["honor_labels"] is True
    assert gateway["static_configs"] == [{"targets": ["127.0.0.1:19091"]}]
    assert config["rule_files"] == [str(monitoring_config.LOCAL_SLO_RULES)]
    managers = config["alerting"]["alertmanagers"]
    assert managers == [
        {"path_prefix": "/", "scheme": "http", "static_configs": [{"targets": ["127.0.0.1:19093"]}]}
    ]
    assert config["global"]["scrape_interval"] == "15s"


def test_remote_pushgateway_and_alertmanager_are_targets_as_given(settings: Settings) -> None:
    remote = settings.model_copy(
        update={
            "pushgateway_url": "https://push.example.com:9443/gw",
            "alertmanager_url": "http://am.example.com/am",
        }
    )
    config = monitoring_config.prometheus_config(
        remote, MonitoringSetup(serving_targets=("10.0.0.5:8000",))
    )
    gateway = _job(config, "mlre-pushgateway")
    assert gateway["scheme"] == "https"
    assert gateway["metrics_path"] == "/gw/metrics"
    assert gateway["static_configs"] == [{"targets": ["push.example.com:9443"]}]
    manager = config["alerting"]["alertmanagers"][0]
    assert manager["path_prefix"] == "/am"
    assert manager["static_configs"] == [{"targets": ["am.example.com:80"]}]
    assert _job(config, "mlre-serving")["static_configs"] == [{"targets": ["10.0.0.5:8000"]}]


def test_without_monitoring_there_is_nothing_to_push_to_or_alert(settings: Settings) -> None:
    off = settings.model_copy(update={"monitoring": False})
    config = monitoring_config.prometheus_config(off, MonitoringSetup())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["mlre-serving"]
    assert "alerting" not in config


def test_drill_timing_is_one_second_everywhere(settings: Settings) -> None:
    setup = MonitoringSetup(timing=DRILL)
    prometheus = monitoring_config.prometheus_config(settings, setup)["global"]
    assert (prometheus["scrape_interval"], prometheus["evaluation_interval"]) == ("1s", "1s")
    route = monitoring_config.alertmanager_config(settings, setup)["route"]
    assert (route["group_wait"], route["group_interval"]) == ("1s", "1s")
    assert "--rules.alert.resend-delay=1s" in monitoring_config.prometheus_argv(
        "prometheus", settings, setup
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(15, "15s"), (300, "5m"), (4 * 3600, "4h"), (90, "90s"), (0.25, "250ms"), (1, "1s")],
)
def test_durations_read_like_a_person_wrote_them(seconds: float, text: str) -> None:
    assert monitoring_config.duration(seconds) == text


def test_promtool_accepts_the_rendered_config(settings: Settings, tmp_path: Path) -> None:
    promtool = _tool(monitoring_config.PROMTOOL)
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups: []\n")
    paths = monitoring_config.write_configs(settings, MonitoringSetup(rule_files=(rules,)))

    checked = _run(promtool, "check", "config", str(paths.prometheus_config))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert yaml.safe_load(paths.prometheus_config.read_text())["rule_files"] == [str(rules)]


# ---- alertmanager.yml ------------------------------------------------------------------------


@pytest.mark.parametrize("webhook", [WEBHOOK, ""])
def test_amtool_accepts_the_rendered_alertmanager_config(settings: Settings, webhook: str) -> None:
    amtool = _tool(monitoring_config.AMTOOL)
    paths = monitoring_config.write_configs(
        settings.model_copy(update={"alert_webhook_url": webhook}), MonitoringSetup()
    )
    checked = _run(amtool, "check-config", str(paths.alertmanager_config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=X"], "page"),
        (["severity=ticket"], "ticket"),
        (["severity=info"], "null"),
        (["alertname=NoSeverity"], "null"),
    ],
)
def test_amtool_routes_pages_and_tickets_to_the_webhook(
    settings: Settings, labels: list[str], receiver: str
) -> None:
    amtool = _tool(monitoring_config.AMTOOL)
    webhooked = settings.model_copy(update={"alert_webhook_url": WEBHOOK})
    paths = monitoring_config.write_configs(webhooked, MonitoringSetup())

    routed = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={paths.alertmanager_config}",
        f"--verify.receivers={receiver}",
        *labels,
    )

    assert routed.returncode == 0, routed.stdout + routed.stderr
    assert routed.stdout.split() == [receiver]


def test_page_and_ticket_receivers_post_to_the_webhook_or_drop(settings: Settings) -> None:
    with_hook = monitoring_config.alertmanager_config(
        settings.model_copy(update={"alert_webhook_url": WEBHOOK}), MonitoringSetup()
    )
    receivers = {r["name"]: r for r in with_hook["receivers"]}
    for name in ("page", "ticket"):
        assert receivers[name]["webhook_configs"] == [{"url": WEBHOOK, "send_resolved": True}]
    assert receivers["null"] == {"name": "null"}

    # No webhook given: the local alert relay, with the bearer token file it shares.
    relayed = monitoring_config.alertmanager_config(settings, MonitoringSetup())
    receivers = {r["name"]: r for r in relayed["receivers"]}
    token = settings.home / "relay" / "token"
    for name in ("page", "ticket"):
        assert receivers[name]["webhook_configs"] == [
            {
                "url": f"http://127.0.0.1:{settings.relay_port}/alerts",
                "send_resolved": True,
                "http_config": {
                    "authorization": {"type": "Bearer", "credentials_file": str(token)}
                },
            }
        ]

    without = monitoring_config.alertmanager_config(
        settings.model_copy(update={"alert_relay": False}), MonitoringSetup()
    )
    assert all(set(r) == {"name"} for r in without["receivers"])


def test_the_relay_starts_before_alertmanager_unless_turned_off(settings: Settings) -> None:
    specs = {s.name: s for s in local_platform.platform_specs(settings)}
    assert list(specs) == [
        "prefect",
        "mlflow",
        "relay",
        "pushgateway",
        "alertmanager",
        "prometheus",
    ]
    relay = specs["relay"]
    assert relay.argv[1:] == ("-m", "relay")
    assert relay.health_url == f"http://127.0.0.1:{settings.relay_port}/healthz"
    assert relay.extra_env["MLRE_RELAY_PREFECT_API_URL"] == settings.prefect_api_url
    off = settings.model_copy(update={"alert_relay": False})
    assert "relay" not in [s.name for s in local_platform.platform_specs(off)]


# ---- the servers `mlre up` starts ------------------------------------------------------------


def test_monitoring_specs_bind_loopback_with_data_under_home(settings: Settings) -> None:
    specs = {spec.name: spec for spec in local_platform.monitoring_specs(settings)}
    assert list(specs) == ["pushgateway", "alertmanager", "prometheus"]
    for name, port in (("prometheus", 19090), ("alertmanager", 19093), ("pushgateway", 19091)):
        spec = specs[name]
        assert spec.health_url == f"http://127.0.0.1:{port}/-/ready"
        assert f"--web.listen-address=127.0.0.1:{port}" in spec.argv
        assert spec.port_env == f"MLRE_{name.upper()}_PORT"
        for arg in spec.argv[1:]:
            if arg.startswith(("--config.file=", "--storage", "--persistence.file=")):
                assert Path(arg.split("=", 1)[1]).is_relative_to(settings.home.resolve()), arg
    assert "--cluster.listen-address=" in specs["alertmanager"].argv
    assert Path(specs["prometheus"].argv[0]).name == "prometheus"
    assert specs["prometheus"].reloads_on_sighup
    assert not specs["pushgateway"].reloads_on_sighup


def test_a_missing_binary_is_named_and_left_out(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        monitoring_config,
        "find_binary",
        lambda name: None if name == "prometheus-alertmanager" else f"/usr/bin/{name}",
    )
    said: list[str] = []
    specs = local_platform.platform_specs(settings)

    kept = local_platform._installed(specs, said.append)

    assert [s.name for s in kept] == ["prefect", "mlflow", "relay", "pushgateway", "prometheus"]
    assert "prometheus-alertmanager not found" in said[0]
    assert "apt-get install" in said[0]
    assert "prometheus-alertmanager" in said[0]
    rows = {row.name: row.health for row in local_platform.status(settings)}
    assert rows["alertmanager"] == "not installed"


def test_monitoring_off_leaves_only_prefect_and_mlflow(settings: Settings) -> None:
    off = settings.model_copy(update={"monitoring": False})
    assert [s.name for s in local_platform.platform_specs(off)] == ["prefect", "mlflow"]
