"""`mlre up | status | down` as a user runs them: real Prefect and MLflow servers and the
monitoring stack (Debian's Prometheus, Alertmanager, Pushgateway) on free ports in a private home
under `.mlre/`, plus the process manager against real child processes."""

from __future__ import annotations

import signal
import socket
import sys
import time
import urllib.request

import psutil
import pytest

from mlre import local_platform, monitoring_config, supervisor
from mlre.errors import PlatformError
from mlre.supervisor import free_port
from mlre.waiting import wait_until
from tests.e2e.conftest import PrivatePlatform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SERVICES = {"prefect", "mlflow", "relay", "pushgateway", "alertmanager", "prometheus"}


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited server waits a moment for init to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


def test_up_reuse_status_down(private_platform: PrivatePlatform) -> None:
    plat = private_platform
    prefect_url = f"http://127.0.0.1:{plat.prefect_port}"
    mlflow_url = f"http://127.0.0.1:{plat.mlflow_port}"
    monitoring_urls = [
        f"http://127.0.0.1:{port}"
        for port in (plat.prometheus_port, plat.alertmanager_port, plat.pushgateway_port)
    ]

    started = time.monotonic()
    first = plat.mlre("up")
    cold_s = time.monotonic() - started
    assert first.returncode == 0, first.stderr + first.stdout
    assert _healthy(f"{prefect_url}/api/health")
    assert _healthy(f"{mlflow_url}/health")
    for url in monitoring_urls:
        assert _healthy(f"{url}/-/ready")
    assert _healthy(f"http://127.0.0.1:{plat.relay_port}/healthz")
    pids = plat.pids()
    assert set(pids) == SERVICES
    config = plat.home / "monitoring" / "prometheus.yml"
    assert f"127.0.0.1:{plat.pushgateway_port}" in config.read_text()
    print(f"mlre up cold: {cold_s:.1f} s")

    second = plat.mlre("up")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == len(SERVICES)
    assert "prometheus: configuration reloaded" in second.stdout
    assert plat.pids() == pids

    shown = plat.mlre("status")
    assert shown.returncode == 0, shown.stdout
    for url in (prefect_url, mlflow_url, *monitoring_urls):
        assert url in shown.stdout
    rows = {line.split()[0]: line.split()[3] for line in shown.stdout.splitlines()[1:]}
    assert rows == dict.fromkeys(SERVICES, "healthy")

    stopped = plat.mlre("down")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(_running(pid) for pid in pids.values())
    assert plat.pids() == {}
    assert plat.mlre("status").returncode == 1

    again = plat.mlre("down")
    assert again.returncode == 0
    assert "nothing was running" in again.stdout


@pytest.mark.parametrize("taken", ["prefect", "mlflow", "prometheus"])
def test_foreign_process_on_port_is_a_clear_error(
    private_platform: PrivatePlatform, taken: str
) -> None:
    plat = private_platform
    port = getattr(plat, f"{taken}_port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        result = plat.mlre("up")

    assert result.returncode == 2
    # Refused before anything starts: neither server was spawned (no start-up line, no log).
    assert "starting on" not in result.stdout
    for service in SERVICES:
        assert not local_platform.log_path(plat.settings, service).exists(), service
    assert str(port) in result.stderr
    assert taken in result.stderr
    assert f"MLRE_{taken.upper()}_PORT=" in result.stderr
    assert "Traceback" not in result.stderr
    assert plat.pids() == {}, "nothing may be left half-started"


def test_missing_monitoring_binaries_still_bring_up_prefect_and_mlflow(
    private_platform: PrivatePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = private_platform.settings
    monkeypatch.setattr(monitoring_config, "find_binary", lambda name: None)
    said: list[str] = []

    rows = {row.name: row.health for row in local_platform.up(settings, said.append)}

    assert rows == {
        "prefect": "healthy",
        "mlflow": "healthy",
        "relay": "healthy",  # Python, always there (a remote Alertmanager may post to it)
        "pushgateway": "not installed",
        "alertmanager": "not installed",
        "prometheus": "not installed",
    }
    hint = next(line for line in said if "not found" in line)
    assert "apt-get install" in hint
    for package in monitoring_config.DEBIAN_PACKAGES:
        assert package in hint
    assert local_platform.services_healthy(local_platform.status(settings), settings)
    assert set(private_platform.pids()) == {"prefect", "mlflow", "relay"}


def test_stop_process_kills_the_whole_group(private_platform: PrivatePlatform) -> None:
    settings = private_platform.settings
    record = local_platform.start_process(
        settings, "worker-test", ["sh", "-c", "sleep 300 & sleep 300 & wait"]
    )
    leader = psutil.Process(record.pid)
    wait_until(lambda: len(leader.children()) >= 2, timeout_s=30, what="both sleeps started")
    family = [leader, *leader.children(recursive=True)]
    assert len(family) == 3
    assert local_platform.is_running(settings, "worker-test")

    assert local_platform.stop_process(settings, "worker-test")
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    assert not local_platform.pid_path(settings, "worker-test").exists()
    assert not local_platform.stop_process(settings, "worker-test")


def test_sigterm_ignored_escalates_to_sigkill(
    private_platform: PrivatePlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = private_platform.settings
    # The marker is computed so the log header (which echoes argv) cannot match it early.
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ar' + 'med', flush=True); time.sleep(300)"
    )
    local_platform.start_process(settings, "worker-stubborn", [sys.executable, "-c", code])
    log = local_platform.log_path(settings, "worker-stubborn")
    wait_until(lambda: "armed" in log.read_text(), timeout_s=30, what="SIGTERM handler armed")
    sent: list[signal.Signals] = []
    real_signal_group = supervisor.signal_group

    def recording(pgid: int, procs: list[psutil.Process], sig: signal.Signals) -> None:
        sent.append(sig)
        real_signal_group(pgid, procs, sig)

    monkeypatch.setattr(supervisor, "signal_group", recording)

    assert local_platform.stop_process(settings, "worker-stubborn", timeout_s=0.5)

    # SIGTERM is ignored, so the process outlived the grace period and only SIGKILL ended it.
    assert sent == [signal.SIGTERM, signal.SIGKILL]
    assert not local_platform.is_running(settings, "worker-stubborn")
    assert not local_platform.pid_path(settings, "worker-stubborn").exists()


def test_server_dying_at_start_up_shows_its_log(private_platform: PrivatePlatform) -> None:
    settings = private_platform.settings
    spec = local_platform.ServiceSpec(
        name="doomed",
        argv=("sh", "-c", "echo 'fatal: doomed-marker'; exit 3"),
        host="127.0.0.1",
        port=free_port(),
        health_path="/health",
        port_env="MLRE_DOOMED_PORT",
    )
    record = local_platform.start_process(settings, spec.name, spec.argv, port=spec.port)
    with pytest.raises(PlatformError, match="doomed exited during start-up") as caught:
        local_platform.wait_healthy(spec, settings, record)
    # The exit was noticed (its log shown), not the health timeout run out.
    assert "not healthy" not in str(caught.value)
    assert "fatal: doomed-marker" in str(caught.value)
    assert local_platform.live_process(record) is None
