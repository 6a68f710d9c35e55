"""The local platform: a real Prefect server and MLflow tracking server as background processes,
and the monitoring stack next to them (Debian's Prometheus, Alertmanager and Pushgateway; see
mlre.monitoring_config) unless `MLRE_MONITORING=false`.

`up` starts what is not running and waits for health (a missing monitoring binary is reported
with what to install, and the rest still starts), `down` stops workers, then the monitoring
servers, then Prefect and MLflow, `status` reports each service. Any long-lived process (Prefect
workers, model servers) is started with `start_process` and stopped with `stop_process`, which
keep a PID file per process under `Settings.run_dir` holding the PID, the port and the process
create time, so that a PID the OS has recycled for someone else's process is never mistaken for
ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from mlre import monitoring_config, supervisor
from mlre.errors import PlatformError
from mlre.monitoring_config import MonitoringSetup
from mlre.relay_config import ensure_token_file
from mlre.settings import Settings
from mlre.supervisor import (
    PidRecord,
    live_process,
    log_tail,
    port_in_use,
    read_pid_record,
    write_pid_record,
)

__all__ = [
    "MONITORING_SERVICES",
    "MonitoringSetup",
    "PidRecord",
    "ServiceSpec",
    "ServiceStatus",
    "down",
    "is_running",
    "live_process",
    "log_tail",
    "port_in_use",
    "read_pid_record",
    "start_process",
    "status",
    "stop_process",
    "stop_processes",
    "up",
    "write_pid_record",
]

Health = Literal["healthy", "unhealthy", "stopped", "running", "not installed"]
Echo = Callable[[str], None]

WORKER_PREFIX = "worker"
MONITORING_SERVICES = monitoring_config.SERVERS
RELAY_SERVICE = "relay"
HEALTH_POLL_S = 0.25
PROGRESS_EVERY_S = 5.0


def _quiet(_: str) -> None:
    """Default `echo`: library callers get no output unless they ask for it."""


@dataclass(frozen=True)
class ServiceSpec:
    """One server `mlre up` manages: how to start it and how to tell it is healthy."""

    name: str
    argv: tuple[str, ...]
    host: str
    port: int
    health_path: str
    port_env: str
    extra_env: dict[str, str] = field(default_factory=dict)
    # What to install when the executable is missing ("": it is there).
    missing: str = ""
    # Re-read its config on SIGHUP (`up` reloads a reused server after rewriting its config).
    reloads_on_sighup: bool = False

    @property
    def url(self) -> str:
        """Where a person (UI) or client reaches it."""
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.url}{self.health_path}"


@dataclass(frozen=True)
class ServiceStatus:
    """One row of `mlre status`."""

    name: str
    url: str
    pid: int | None
    health: Health
    log_path: Path


# ---- paths and environment -------------------------------------------------------------------


def venv_bin() -> Path:
    """The bin folder of the interpreter running us: the venv's own prefect/mlflow."""
    return Path(sys.executable).parent


def pid_path(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return settings.logs_dir / f"{name}.log"


def mlflow_db_path(settings: Settings) -> Path:
    return (settings.mlflow_dir / "mlflow.db").resolve()


def mlflow_artifacts_dir(settings: Settings) -> Path:
    return (settings.mlflow_dir / "artifacts").resolve()


# Importing Feast 0.67 creates a temp dir, points these at it in os.environ and removes the dir
# when the importing process exits. A long-lived child (the worker) that inherited them would
# hand a dead directory to every flow run it starts, and Feast's import then fails there.
PROCESS_LOCAL_ENV = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment plus the platform's, with the venv's bin first on PATH (less what only
    means something inside this process: PROCESS_LOCAL_ENV)."""
    inherited = {k: v for k, v in os.environ.items() if k not in PROCESS_LOCAL_ENV}
    env = {**inherited, **settings.client_env(), **(extra or {})}
    env["PATH"] = os.pathsep.join([str(venv_bin()), env.get("PATH", "")])
    return env


def service_specs(settings: Settings) -> list[ServiceSpec]:
    """The servers of the local platform, in start order (stopped in reverse)."""
    bin_dir = venv_bin()
    prefect = ServiceSpec(
        name="prefect",
        argv=(
            str(bin_dir / "prefect"), "server", "start",
            "--host", settings.host, "--port", str(settings.prefect_port),
        ),
        host=settings.host,
        port=settings.prefect_port,
        health_path="/api/health",
        port_env="MLRE_PREFECT_PORT",
    )  # fmt: skip
    mlflow = ServiceSpec(
        name="mlflow",
        argv=(
            str(bin_dir / "mlflow"), "server",
            "--host", settings.host, "--port", str(settings.mlflow_port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{mlflow_db_path(settings)}",
            # Clients upload through the server (mlflow-artifacts:/), so they work from anywhere.
            "--artifacts-destination", str(mlflow_artifacts_dir(settings)),
        ),
        host=settings.host,
        port=settings.mlflow_port,
        health_path="/health",
        port_env="MLRE_MLFLOW_PORT",
        # Lean mode: no job-runner processes (~4 s and ~0.5 GB instead of ~18 s and ~2 GB).
        extra_env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    return [prefect, mlflow]


def monitoring_specs(settings: Settings, setup: MonitoringSetup | None = None) -> list[ServiceSpec]:
    """Pushgateway, Alertmanager and Prometheus (Prometheus last: it talks to the other two)."""
    specs = []
    for name in MONITORING_SERVICES:
        executable = monitoring_config.EXECUTABLES[name]
        binary = monitoring_config.find_binary(executable)
        argv = monitoring_config.server_argv(name, binary, settings, setup) if binary else ()
        specs.append(
            ServiceSpec(
                name=name,
                argv=argv or (executable,),
                host=settings.host,
                port=getattr(settings, f"{name}_port"),
                health_path="/-/ready",
                port_env=f"MLRE_{name.upper()}_PORT",
                missing="" if binary else executable,
                reloads_on_sighup=name in monitoring_config.RELOADABLE,
            )
        )
    return specs


def relay_spec(settings: Settings) -> ServiceSpec:
    """The alert relay (`python -m relay`): Alertmanager's webhook -> Prefect events."""
    return ServiceSpec(
        name=RELAY_SERVICE,
        argv=(str(venv_bin() / "python"), "-m", "relay"),
        host=settings.host,
        port=settings.relay_port,
        health_path="/healthz",
        port_env="MLRE_RELAY_PORT",
        # The child reads its own settings from the environment: hand it this platform's.
        extra_env={
            "MLRE_HOST": settings.host,
            "MLRE_RELAY_PORT": str(settings.relay_port),
            "MLRE_RELAY_PREFECT_API_URL": settings.prefect_api_url,
        },
    )


def platform_specs(settings: Settings, setup: MonitoringSetup | None = None) -> list[ServiceSpec]:
    """Every server `mlre up` manages: Prefect and MLflow, then (with monitoring) the alert
    relay and the monitoring stack (the relay first: Alertmanager posts to it)."""
    specs = service_specs(settings)
    if settings.monitoring:
        if settings.alert_relay:
            specs.append(relay_spec(settings))
        specs += monitoring_specs(settings, setup)
    return specs


# ---- PID files and processes -----------------------------------------------------------------


def is_running(settings: Settings, name: str) -> bool:
    """Whether the process recorded under `name` is alive and still ours."""
    return live_process(read_pid_record(pid_path(settings, name))) is not None


def start_process(
    settings: Settings,
    name: str,
    argv: list[str] | tuple[str, ...],
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> PidRecord:
    """Start `argv` in its own session, logging to `logs/<name>.log`, recorded in `run/<name>.pid`.

    `env` defaults to `child_env(settings)`. Raises PlatformError if `name` is already running.
    """
    settings.ensure_dirs()
    if is_running(settings, name):
        raise PlatformError(
            f"{name} is already running (PID file {pid_path(settings, name)}).\n"
            f"hint: stop it first with `mlre down`."
        )
    proc = supervisor.spawn(
        argv,
        log_path=log_path(settings, name),
        env=env if env is not None else child_env(settings),
        # Anything a tool writes to its working directory lands in our runtime folder.
        cwd=settings.home,
    )
    record = PidRecord.of(name, proc.pid, argv, port)
    write_pid_record(pid_path(settings, name), record)
    return record


def stop_process(settings: Settings, name: str, timeout_s: float | None = None) -> bool:
    """SIGTERM the process group of `name`, SIGKILL after the grace period; True if it was running.

    The PID file is removed either way (a stale one must not block the next start).
    """
    return bool(stop_processes(settings, [name], timeout_s))


def stop_processes(
    settings: Settings, names: list[str], timeout_s: float | None = None
) -> list[str]:
    """Stop several processes at once (one shared grace period); returns those that were running."""
    grace = settings.stop_timeout_s if timeout_s is None else timeout_s
    leaders = {}
    for name in names:
        proc = live_process(read_pid_record(pid_path(settings, name)))
        if proc is not None:
            leaders[name] = proc
    supervisor.stop(leaders.values(), grace)
    for name in names:
        pid_path(settings, name).unlink(missing_ok=True)
    return list(leaders)


def recorded_names(settings: Settings) -> list[str]:
    """Names of every process with a PID file (running or stale)."""
    if not settings.run_dir.is_dir():
        return []
    return sorted(p.stem for p in settings.run_dir.glob("*.pid"))


# ---- ports and health ------------------------------------------------------------------------


def check_health(spec: ServiceSpec, timeout_s: float = 2.0) -> bool:
    """One GET of the health endpoint; True on HTTP 200."""
    try:
        with urllib.request.urlopen(spec.health_url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(
    spec: ServiceSpec,
    settings: Settings,
    record: PidRecord | None = None,
    echo: Echo = _quiet,
    log_offset: int = 0,
) -> float:
    """Poll the health endpoint until 200; return the seconds waited.

    Fails fast with the log's last lines if the recorded process exits (or had already exited),
    and after `settings.health_timeout_s`.
    """
    next_progress = [PROGRESS_EVERY_S]

    def progress(elapsed: float) -> None:
        if elapsed >= next_progress[0]:
            echo(f"  … waiting for {spec.name} ({elapsed:.0f} s)")
            next_progress[0] = elapsed + PROGRESS_EVERY_S

    return supervisor.wait_healthy(
        spec.name,
        lambda: check_health(spec),
        alive=lambda: record is None or live_process(record) is not None,
        timeout_s=settings.health_timeout_s,
        log_path=log_path(settings, spec.name),
        offset=log_offset,
        progress=progress,
        interval_s=HEALTH_POLL_S,
    )


# ---- up / down / status ----------------------------------------------------------------------


@contextlib.contextmanager
def _platform_lock(settings: Settings) -> Iterator[None]:
    """Serialise concurrent `up`/`down` on one home (two terminals, a test and `make demo`)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _port_conflict(spec: ServiceSpec) -> PlatformError:
    """The error for a port someone else holds: names the port, the service and the way out."""
    return PlatformError(
        f"port {spec.port} on {spec.host} is taken by another process, so {spec.name} cannot start "
        f"there.\nhint: stop that process (`ss -ltnp 'sport = :{spec.port}'` shows it) or pick "
        f"another port, e.g. `{spec.port_env}={_suggest_port(spec)} mlre up`."
    )


def _suggest_port(spec: ServiceSpec) -> int:
    """A nearby free port to put in the hint."""
    for candidate in range(spec.port + 1, spec.port + 50):
        if not port_in_use(spec.host, candidate):
            return candidate
    return spec.port + 100


def up(
    settings: Settings,
    echo: Echo = _quiet,
    *,
    only: tuple[str, ...] | None = None,
    monitoring: MonitoringSetup | None = None,
) -> list[ServiceStatus]:
    """Start every service that is not running, wait until all are healthy; idempotent.

    `only` limits it to some services by name (e.g. MONITORING_SERVICES); `monitoring` is what
    the monitoring configs are written with (default: standard timing, the local SLO rules).
    """
    settings.ensure_dirs()
    mlflow_artifacts_dir(settings).mkdir(parents=True, exist_ok=True)
    with _platform_lock(settings):
        specs = [s for s in platform_specs(settings, monitoring) if only is None or s.name in only]
        specs = _installed(specs, echo)
        to_start = _plan(settings, specs, echo)
        if any(spec.name in (*MONITORING_SERVICES, RELAY_SERVICE) for spec in specs):
            ensure_token_file(settings)  # the relay and Alertmanager read the same token
        if any(spec.name in MONITORING_SERVICES for spec in specs):
            monitoring_config.write_configs(settings, monitoring or MonitoringSetup())
            _reload_reused(settings, [s for s in specs if s not in to_start], echo)
        started = {spec.name: _start_service(settings, spec, echo) for spec in to_start}
        for spec in specs:
            _await_service(settings, spec, started.get(spec.name), echo)
    return status(settings, monitoring)


def _installed(specs: list[ServiceSpec], echo: Echo) -> list[ServiceSpec]:
    """The specs whose executable exists; says what to install for the others."""
    missing = [spec for spec in specs if spec.missing]
    if missing:
        echo(
            f"monitoring: {', '.join(s.missing for s in missing)} not found on PATH, so "
            f"{', '.join(s.name for s in missing)} will not run; the rest starts as usual.\n"
            f"hint: install Debian's packages: `sudo {monitoring_config.INSTALL_HINT}` "
            "(or set MLRE_MONITORING=false)."
        )
    return [spec for spec in specs if not spec.missing]


def _reload_reused(settings: Settings, reused: list[ServiceSpec], echo: Echo) -> None:
    """Have running Prometheus/Alertmanager re-read the configs (and SLO rules) just written."""
    for spec in reused:
        proc = live_process(read_pid_record(pid_path(settings, spec.name)))
        if spec.reloads_on_sighup and proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGHUP)
                echo(f"{spec.name}: configuration reloaded")


def _plan(settings: Settings, specs: list[ServiceSpec], echo: Echo) -> list[ServiceSpec]:
    """Services to start; reused ones are announced, port conflicts raise before anything starts."""
    to_start = []
    for spec in specs:
        record = read_pid_record(pid_path(settings, spec.name))
        if live_process(record) is not None:
            if record.port is not None and record.port != spec.port:
                raise PlatformError(
                    f"{spec.name} is already running on port {record.port} (PID {record.pid}), "
                    f"but the settings now say port {spec.port}.\n"
                    f"hint: run `mlre down` first, or unset {spec.port_env}."
                )
            state = "healthy" if check_health(spec) else "starting"
            echo(f"{spec.name}: already running (PID {record.pid}, {state}), reusing {spec.url}")
            continue
        pid_path(settings, spec.name).unlink(missing_ok=True)  # stale: the process is gone
        if port_in_use(spec.host, spec.port):
            raise _port_conflict(spec)
        to_start.append(spec)
    return to_start


def _start_service(settings: Settings, spec: ServiceSpec, echo: Echo) -> tuple[PidRecord, int]:
    """Start one server; returns its record and the log offset where this start begins."""
    log = log_path(settings, spec.name)
    offset = log.stat().st_size if log.exists() else 0
    record = start_process(
        settings, spec.name, spec.argv, env=child_env(settings, spec.extra_env), port=spec.port
    )
    echo(f"{spec.name}: starting on {spec.url} (PID {record.pid}, log {log})")
    return record, offset


def _await_service(
    settings: Settings, spec: ServiceSpec, started: tuple[PidRecord, int] | None, echo: Echo
) -> None:
    """Wait for one service; a server that fails to come up is stopped so nothing half-runs."""
    record, offset = started if started else (read_pid_record(pid_path(settings, spec.name)), 0)
    try:
        waited = wait_healthy(spec, settings, record, echo, offset)
    except PlatformError:
        stop_process(settings, spec.name)
        raise
    if started:
        echo(f"{spec.name}: healthy after {waited:.1f} s")


def down(settings: Settings, echo: Echo = _quiet) -> list[str]:
    """Stop workers, then other recorded processes, then the servers; returns what was stopped."""
    stopped: list[str] = []
    with _platform_lock(settings):
        # Phase by phase (a worker outliving its server hangs); each phase stops in parallel.
        for phase in _stop_phases(settings):
            for name in stop_processes(settings, phase):
                echo(f"{name}: stopped")
                stopped.append(name)
    if not stopped:
        echo("nothing was running")
    return stopped


def _stop_phases(settings: Settings) -> list[list[str]]:
    """Workers first, then other recorded processes (model servers...), then the monitoring
    servers, then Prefect and MLflow."""
    services = [spec.name for spec in reversed(service_specs(settings))]
    recorded = recorded_names(settings)
    monitoring = [name for name in reversed(MONITORING_SERVICES) if name in recorded]
    others = [name for name in recorded if name not in services and name not in monitoring]
    workers = [name for name in others if name.startswith(WORKER_PREFIX)]
    rest = [name for name in others if not name.startswith(WORKER_PREFIX)]
    return [workers, rest, monitoring, services]


def status(settings: Settings, monitoring: MonitoringSetup | None = None) -> list[ServiceStatus]:
    """Each server (and any other recorded process) with its URL, PID and health."""
    rows = [_service_status(settings, spec) for spec in platform_specs(settings, monitoring)]
    services = {row.name for row in rows}
    for name in recorded_names(settings):
        if name not in services:
            record = read_pid_record(pid_path(settings, name))
            alive = live_process(record) is not None
            rows.append(
                ServiceStatus(
                    name=name,
                    url="-",
                    pid=record.pid if alive and record else None,
                    health="running" if alive else "stopped",
                    log_path=log_path(settings, name),
                )
            )
    return rows


def _service_status(settings: Settings, spec: ServiceSpec) -> ServiceStatus:
    record = read_pid_record(pid_path(settings, spec.name))
    alive = live_process(record) is not None
    health: Health = "not installed" if spec.missing and not alive else "stopped"
    if alive:
        health = "healthy" if check_health(spec) else "unhealthy"
    return ServiceStatus(
        name=spec.name,
        url=spec.url,
        pid=record.pid if alive and record else None,
        health=health,
        log_path=log_path(settings, spec.name),
    )


def services_healthy(rows: list[ServiceStatus], settings: Settings) -> bool:
    """True when every platform server (not workers) is healthy; a monitoring server that is not
    installed does not count (`mlre up` said what to install)."""
    names = {spec.name for spec in platform_specs(settings)}
    return all(row.health in {"healthy", "not installed"} for row in rows if row.name in names)
