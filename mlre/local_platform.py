"""The local platform: a real Prefect server and MLflow tracking server as background processes.

`up` starts what is not running and waits for health, `down` stops workers then servers, `status`
reports each service. Any long-lived process (Prefect workers, model servers) is started with
`start_process` and stopped with `stop_process`, which keep a PID file per process under
`Settings.run_dir` holding the PID, the port and the process create time, so that a PID the OS has
recycled for someone else's process is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import psutil

from mlre.errors import PlatformError
from mlre.settings import Settings

Health = Literal["healthy", "unhealthy", "stopped", "running"]
Echo = Callable[[str], None]

WORKER_PREFIX = "worker"
CREATE_TIME_TOLERANCE_S = 0.05
HEALTH_POLL_S = 0.25
STOP_POLL_S = 0.05
PROGRESS_EVERY_S = 5.0
LOG_TAIL_LINES = 25


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

    @property
    def url(self) -> str:
        """Where a person (UI) or client reaches it."""
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.url}{self.health_path}"


@dataclass(frozen=True)
class PidRecord:
    """What a PID file holds: enough to recognise our process after the PID is recycled."""

    name: str
    pid: int
    create_time: float
    argv: tuple[str, ...]
    port: int | None = None
    started_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PidRecord | None:
        """Parse a PID file; None for anything unreadable (a torn write or a foreign file)."""
        try:
            data = json.loads(text)
            return cls(
                name=str(data["name"]),
                pid=int(data["pid"]),
                create_time=float(data["create_time"]),
                argv=tuple(str(a) for a in data.get("argv", ())),
                port=None if data.get("port") is None else int(data["port"]),
                started_at=str(data.get("started_at", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


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


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment plus the platform's, with the venv's bin first on PATH."""
    env = {**os.environ, **settings.client_env(), **(extra or {})}
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


# ---- PID files and processes -----------------------------------------------------------------


def read_pid_record(path: Path) -> PidRecord | None:
    """The record in a PID file, or None when it is missing or unreadable."""
    try:
        return PidRecord.from_json(path.read_text())
    except OSError:
        return None


def write_pid_record(path: Path, record: PidRecord) -> None:
    """Write atomically so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(record.to_json())
    tmp.replace(path)


def live_process(record: PidRecord | None) -> psutil.Process | None:
    """Our process if it still runs; None if it exited or its PID now belongs to another process."""
    if record is None:
        return None
    try:
        proc = psutil.Process(record.pid)
        same = abs(proc.create_time() - record.create_time) <= CREATE_TIME_TOLERANCE_S
        if not same or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


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
    log = log_path(settings, name)
    with log.open("ab") as out:
        out.write(f"\n=== mlre: {_now()} starting {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env if env is not None else child_env(settings),
                # Its own session: SIGINT at our terminal does not reach it, and `down` can signal
                # the whole process group (uvicorn workers and other children included).
                start_new_session=True,
                # Anything a tool writes to its working directory lands in our runtime folder.
                cwd=settings.home,
            )
        except OSError as exc:
            raise PlatformError(
                f"could not start {name}: {argv[0]}: {exc.strerror}.\n"
                "hint: reinstall the environment with `make install`."
            ) from exc
    record = PidRecord(
        name=name,
        pid=proc.pid,
        create_time=psutil.Process(proc.pid).create_time(),
        argv=tuple(argv),
        port=port,
        started_at=_now(),
    )
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
    leaders: dict[str, psutil.Process] = {}
    for name in names:
        proc = live_process(read_pid_record(pid_path(settings, name)))
        if proc is not None:
            leaders[name] = proc
    families = {name: _family(proc) for name, proc in leaders.items()}
    for name, proc in leaders.items():
        _signal_group(proc.pid, families[name], signal.SIGTERM)
    members = [member for family in families.values() for member in family]
    alive = _wait_gone(members, grace)
    if alive:
        for proc in leaders.values():
            _signal_group(proc.pid, alive, signal.SIGKILL)
        _wait_gone(alive, grace)
    for name in names:
        pid_path(settings, name).unlink(missing_ok=True)
    return list(leaders)


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Poll until every process has exited; returns those still alive at the deadline.

    psutil.wait_procs waits up to 1 s per process in turn, which makes a stop of several
    processes that exit at different moments needlessly slow.
    """
    deadline = time.monotonic() + timeout_s
    alive = [proc for proc in procs if _still_running(proc)]
    while alive and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
        alive = [proc for proc in alive if _still_running(proc)]
    return alive


def _still_running(proc: psutil.Process) -> bool:
    """False once it exited; a zombie child of ours is reaped on the way."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                proc.wait(0)
            return False
        return proc.is_running()
    except psutil.Error:
        return False


def _family(proc: psutil.Process) -> list[psutil.Process]:
    """A process and its descendants, as far as they can still be listed."""
    family = [proc]
    with contextlib.suppress(psutil.Error):
        family += proc.children(recursive=True)
    return family


def _signal_group(pgid: int, procs: list[psutil.Process], sig: signal.Signals) -> None:
    """Signal the process group, and each known member in case it left the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for member in procs:
        with contextlib.suppress(psutil.Error):
            member.send_signal(sig)


def recorded_names(settings: Settings) -> list[str]:
    """Names of every process with a PID file (running or stale)."""
    if not settings.run_dir.is_dir():
        return []
    return sorted(p.stem for p in settings.run_dir.glob("*.pid"))


# ---- ports and health ------------------------------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """Whether something holds host:port: a bind test, then a connect test.

    Raises PlatformError when `host` is not an address of this machine (nothing could bind it).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections in TIME_WAIT from a server we just stopped do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise PlatformError(
                f"cannot bind {host}:{port}: {exc.strerror}.\n"
                "hint: set MLRE_HOST to an address of this machine (default 127.0.0.1)."
            ) from exc
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


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
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    while True:
        if check_health(spec):
            return time.monotonic() - started
        if record is not None and live_process(record) is None:
            raise PlatformError(
                f"{spec.name} exited during start-up. {_log_excerpt(settings, spec, log_offset)}\n"
                "hint: fix the cause above, then run `mlre up` again."
            )
        now = time.monotonic()
        if now - started > settings.health_timeout_s:
            raise PlatformError(
                f"{spec.name} not healthy at {spec.health_url} after "
                f"{settings.health_timeout_s:.0f} s. {_log_excerpt(settings, spec, log_offset)}\n"
                "hint: raise MLRE_HEALTH_TIMEOUT_S on a slow machine, or read the log."
            )
        if now >= next_progress:
            echo(f"  … waiting for {spec.name} ({now - started:.0f} s)")
            next_progress = now + PROGRESS_EVERY_S
        time.sleep(HEALTH_POLL_S)


def _log_excerpt(settings: Settings, spec: ServiceSpec, offset: int) -> str:
    """'Last lines of <log>:' and the lines themselves, for start-up errors."""
    path = log_path(settings, spec.name)
    return f"Last lines of {path}:\n{log_tail(path, offset)}"


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log written after byte `offset` (this start only)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "  (no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in tail) or "  (log is empty)"


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


def up(settings: Settings, echo: Echo = _quiet) -> list[ServiceStatus]:
    """Start every service that is not running, wait until all are healthy; idempotent."""
    settings.ensure_dirs()
    mlflow_artifacts_dir(settings).mkdir(parents=True, exist_ok=True)
    with _platform_lock(settings):
        specs = service_specs(settings)
        to_start = _plan(settings, specs, echo)
        started = {spec.name: _start_service(settings, spec, echo) for spec in to_start}
        for spec in specs:
            _await_service(settings, spec, started.get(spec.name), echo)
    return status(settings)


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
    """Workers first, then other recorded processes (model servers...), then the servers."""
    services = [spec.name for spec in reversed(service_specs(settings))]
    others = [name for name in recorded_names(settings) if name not in services]
    workers = [name for name in others if name.startswith(WORKER_PREFIX)]
    rest = [name for name in others if not name.startswith(WORKER_PREFIX)]
    return [workers, rest, services]


def status(settings: Settings) -> list[ServiceStatus]:
    """Each server (and any other recorded process) with its URL, PID and health."""
    rows = [_service_status(settings, spec) for spec in service_specs(settings)]
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
    health: Health = "stopped"
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
    """True when every platform server (not workers) is healthy."""
    names = {spec.name for spec in service_specs(settings)}
    return all(row.health == "healthy" for row in rows if row.name in names)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
