"""Pure helpers of the platform manager: PID files, stale PIDs, specs from settings, ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil
import pytest

from mlre import local_platform
from mlre.local_platform import PidRecord
from mlre.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", prefect_port=14321, mlflow_port=15432, monitoring=True)


def _own_record(name: str = "worker-a", **changes: object) -> PidRecord:
    me = psutil.Process(os.getpid())
    fields = {"name": name, "pid": me.pid, "create_time": me.create_time(), "argv": ("x",)}
    return PidRecord(**{**fields, **changes})  # type: ignore[arg-type]


def test_pid_record_round_trips_through_json() -> None:
    record = _own_record(port=4200, started_at="2026-01-01T00:00:00+00:00")
    assert PidRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    "text",
    ["", "12345", "not json", "{}", '{"name": "x", "pid": "abc", "create_time": 1}', "[1, 2]"],
)
def test_unreadable_pid_file_parses_as_none(text: str) -> None:
    assert PidRecord.from_json(text) is None


def test_missing_pid_file_reads_as_none(tmp_path: Path) -> None:
    assert local_platform.read_pid_record(tmp_path / "nope.pid") is None


def test_write_then_read_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "worker-a.pid"
    record = _own_record()
    local_platform.write_pid_record(path, record)
    assert local_platform.read_pid_record(path) == record
    assert [p.name for p in path.parent.iterdir()] == ["worker-a.pid"]  # no temp file left


def test_live_process_recognises_our_process() -> None:
    proc = local_platform.live_process(_own_record())
    assert proc is not None
    assert proc.pid == os.getpid()


def test_recycled_pid_is_not_ours() -> None:
    # Same PID, different create time: the OS gave our old PID to someone else.
    record = _own_record(create_time=psutil.Process(os.getpid()).create_time() - 1000)
    assert local_platform.live_process(record) is None


def test_exited_pid_is_stale() -> None:
    proc = psutil.Popen(["true"])
    create_time = proc.create_time()
    proc.wait()
    assert local_platform.live_process(_own_record(pid=proc.pid, create_time=create_time)) is None
    assert local_platform.live_process(None) is None


def test_is_running_reads_the_pid_file(settings: Settings) -> None:
    assert not local_platform.is_running(settings, "worker-a")
    local_platform.write_pid_record(local_platform.pid_path(settings, "worker-a"), _own_record())
    assert local_platform.is_running(settings, "worker-a")


def test_specs_come_from_settings(settings: Settings) -> None:
    prefect, mlflow = local_platform.service_specs(settings)
    assert prefect.name == "prefect"
    assert prefect.health_url == "http://127.0.0.1:14321/api/health"
    assert prefect.argv[1:] == ("server", "start", "--host", "127.0.0.1", "--port", "14321")
    assert Path(prefect.argv[0]) == local_platform.venv_bin() / "prefect"
    assert mlflow.health_url == "http://127.0.0.1:15432/health"
    assert Path(mlflow.argv[0]) == local_platform.venv_bin() / "mlflow"
    args = dict(zip(mlflow.argv[2::2], mlflow.argv[3::2], strict=False))
    assert args["--workers"] == "1"
    db = Path(args["--backend-store-uri"].removeprefix("sqlite:///"))
    assert db.is_absolute()
    assert db.parent == settings.mlflow_dir.resolve()
    assert Path(args["--artifacts-destination"]).is_relative_to(settings.home.resolve())
    assert mlflow.extra_env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert {prefect.port_env, mlflow.port_env} == {"MLRE_PREFECT_PORT", "MLRE_MLFLOW_PORT"}


def test_child_env_keeps_state_in_home_and_venv_first(settings: Settings) -> None:
    env = local_platform.child_env(settings, {"EXTRA": "1"})
    assert env["PATH"].split(os.pathsep)[0] == str(local_platform.venv_bin())
    for key in ("PREFECT_HOME", "TMPDIR", "MPLCONFIGDIR", "XDG_CONFIG_HOME"):
        assert Path(env[key]).is_relative_to(settings.home), key
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["MLFLOW_ENABLE_TELEMETRY"] == "false"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:14321/api"
    assert env["EXTRA"] == "1"


def test_child_env_drops_the_metrics_dir_feast_made_for_this_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What `import feast` leaves in os.environ: a dir it deletes when this process exits.
    for key in local_platform.PROCESS_LOCAL_ENV:
        monkeypatch.setenv(key, str(tmp_path / "feast_metrics_x"))
    env = local_platform.child_env(settings)
    assert not set(local_platform.PROCESS_LOCAL_ENV) & set(env)
    # A caller that means it (a multi-process server of its own) still can.
    chosen = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "ours")}
    assert (
        local_platform.child_env(settings, chosen)["PROMETHEUS_MULTIPROC_DIR"]
        == chosen["PROMETHEUS_MULTIPROC_DIR"]
    )


def test_port_in_use_sees_a_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert local_platform.port_in_use("127.0.0.1", port)
    assert not local_platform.port_in_use("127.0.0.1", port)


def test_stop_phases_put_workers_first_and_servers_last(settings: Settings) -> None:
    names = ("prefect", "mlflow", "worker-gpu", "serve-model", "worker-cpu", "prometheus")
    for name in (*names, "pushgateway", "alertmanager"):
        local_platform.write_pid_record(local_platform.pid_path(settings, name), _own_record(name))
    assert local_platform._stop_phases(settings) == [
        ["worker-cpu", "worker-gpu"],
        ["serve-model"],
        ["prometheus", "alertmanager", "pushgateway"],
        ["mlflow", "prefect"],
    ]


def test_status_of_nothing_is_stopped_and_unhealthy(settings: Settings) -> None:
    rows = local_platform.status(settings)
    assert [(r.name, r.health, r.pid) for r in rows] == [
        ("prefect", "stopped", None),
        ("mlflow", "stopped", None),
        ("relay", "stopped", None),
        ("pushgateway", "stopped", None),
        ("alertmanager", "stopped", None),
        ("prometheus", "stopped", None),
    ]
    assert rows[0].url == "http://127.0.0.1:14321"
    assert not local_platform.services_healthy(rows, settings)


def test_down_removes_stale_pid_files_and_reports_nothing(settings: Settings) -> None:
    stale = _own_record("prefect", create_time=1.0)
    local_platform.write_pid_record(local_platform.pid_path(settings, "prefect"), stale)
    assert local_platform.down(settings) == []
    assert not local_platform.pid_path(settings, "prefect").exists()


@pytest.mark.unit
@pytest.mark.parametrize("name", ["nope", "a/b/c", "/weekly", "ml-pipeline/"])
def test_malformed_deployment_names_are_refused_before_any_server_call(name: str) -> None:
    from flows import deploy
    from mlre.errors import PlatformError

    with pytest.raises(PlatformError, match="FLOW/DEPLOYMENT"):
        deploy.trigger(name)
