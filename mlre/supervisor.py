"""The one process supervisor: start a server in its own session, record it, wait for its health,
stop its whole process group.

Used by `mlre up` (mlre.local_platform), the test fixtures' Redis, PostgreSQL and MLflow servers
(tests/support) and the benchmarks, so there is one way to do each of these:

- a process is started in its own session (SIGINT at a terminal does not reach it, and its whole
  process group, forked workers included, can be signalled), its output appended to a log file;
- a PID record holds the PID *and the process create time*, so a PID the OS has recycled for
  someone else's process is never mistaken for ours;
- a health wait polls a check until it passes, fails fast with the log's tail when the process
  exits, and names the service and the log when it times out;
- a stop sends SIGTERM to the group and every known descendant, SIGKILL after a grace period, and
  reaps zombies on the way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from mlre.atomic import write_atomic
from mlre.errors import PlatformError
from mlre.waiting import WaitTimeout, wait_until

CREATE_TIME_TOLERANCE_S = 0.05
HEALTH_POLL_S = 0.1
STOP_POLL_S = 0.05
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class PidRecord:
    """What a PID file holds: enough to recognise our process after the PID is recycled."""

    name: str
    pid: int
    create_time: float
    argv: tuple[str, ...] = ()
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

    @classmethod
    def of(
        cls, name: str, pid: int, argv: Sequence[str] = (), port: int | None = None
    ) -> PidRecord:
        """The record of a process that runs now."""
        return cls(
            name=name,
            pid=pid,
            create_time=psutil.Process(pid).create_time(),
            argv=tuple(argv),
            port=port,
            started_at=now_iso(),
        )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- PID records -----------------------------------------------------------------------------


def read_pid_record(path: Path) -> PidRecord | None:
    """The record in a PID file, or None when it is missing or unreadable."""
    try:
        return PidRecord.from_json(path.read_text())
    except OSError:
        return None


def write_pid_record(path: Path, record: PidRecord) -> None:
    """Publish the record whole (a concurrent reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, record.to_json())


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


# ---- start -----------------------------------------------------------------------------------


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, its output appended to `log_path` after a header line.

    A missing executable is a PlatformError naming it and what to do.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"\n=== {now_iso()} starting {' '.join(argv)}\n".encode())
        out.flush()
        try:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                # Its own session: SIGINT at our terminal does not reach it, and a stop can
                # signal the whole process group (forked workers and other children included).
                start_new_session=True,
                cwd=cwd,
            )
        except OSError as exc:
            raise PlatformError(
                f"could not start {argv[0]}: {exc.strerror}.\n"
                "hint: reinstall the environment with `make install`."
            ) from exc


def log_offset(path: Path) -> int:
    """Where the next start's output begins in a log (its tail is what an error shows)."""
    return path.stat().st_size if path.exists() else 0


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


def wait_healthy(
    name: str,
    check: Callable[[], bool],
    *,
    alive: Callable[[], bool],
    timeout_s: float,
    log_path: Path,
    offset: int = 0,
    progress: Callable[[float], None] | None = None,
    interval_s: float = HEALTH_POLL_S,
) -> float:
    """Poll `check` until it passes; the seconds waited.

    Raises PlatformError with the log's tail when `alive()` turns False (the process exited during
    start-up) and when `timeout_s` passes.
    """
    started = time.monotonic()

    def exited_or_progress(elapsed: float) -> None:
        if not alive():
            raise PlatformError(
                f"{name} exited during start-up. Last lines of {log_path}:\n"
                f"{log_tail(log_path, offset)}\nhint: fix the cause above, then start it again."
            )
        if progress is not None:
            progress(elapsed)

    try:
        wait_until(
            check,
            timeout_s=timeout_s,
            what=f"{name} healthy",
            interval_s=interval_s,
            on_poll=exited_or_progress,
        )
    except WaitTimeout as exc:
        raise PlatformError(
            f"{name} not healthy after {timeout_s:.0f} s. Last lines of {log_path}:\n"
            f"{log_tail(log_path, offset)}\n"
            "hint: raise MLRE_HEALTH_TIMEOUT_S on a slow machine, or read the log."
        ) from exc
    return time.monotonic() - started


# ---- stop ------------------------------------------------------------------------------------


def stop(leaders: Iterable[psutil.Process], grace_s: float, sig: int = signal.SIGTERM) -> None:
    """Signal each leader's process group and known descendants (`sig`, default SIGTERM) and wait;
    SIGKILL whatever is left after `grace_s`. All leaders share one grace period."""
    leaders = list(leaders)
    families = {proc.pid: family(proc) for proc in leaders}
    for proc in leaders:
        signal_group(proc.pid, families[proc.pid], sig)
    members = [member for group in families.values() for member in group]
    alive = wait_gone(members, grace_s)
    if alive:
        for proc in leaders:
            signal_group(proc.pid, alive, signal.SIGKILL)
        wait_gone(alive, grace_s)


def stop_popen(
    proc: subprocess.Popen[bytes] | None, grace_s: float, sig: int = signal.SIGTERM
) -> int | None:
    """Stop a process this one started, and its group; its exit code (-N for signal N).

    The leader is waited for through its Popen (so its exit status is kept, not reaped away),
    its descendants like any others.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            members = family(psutil.Process(proc.pid))
        except psutil.NoSuchProcess:
            members = []
        signal_group(proc.pid, members, sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, members, signal.SIGKILL)
            proc.wait(grace_s)
        descendants = [member for member in members if member.pid != proc.pid]
        if alive := wait_gone(descendants, grace_s):
            signal_group(proc.pid, alive, signal.SIGKILL)
            wait_gone(alive, grace_s)
    return proc.returncode


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; those still alive at the deadline.

    psutil.wait_procs waits up to 1 s per process in turn, which makes a stop of several
    processes that exit at different moments needlessly slow.
    """
    alive = [proc for proc in procs if still_running(proc)]

    def all_gone() -> bool:
        alive[:] = [proc for proc in alive if still_running(proc)]
        return not alive

    with contextlib.suppress(WaitTimeout):
        wait_until(all_gone, timeout_s=timeout_s, what="processes gone", interval_s=STOP_POLL_S)
    return alive


def still_running(proc: psutil.Process) -> bool:
    """False once it exited; a zombie child of ours is reaped on the way."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                proc.wait(0)
            return False
        return proc.is_running()
    except psutil.Error:
        return False


def family(proc: psutil.Process) -> list[psutil.Process]:
    """A process and its descendants, as far as they can still be listed."""
    members = [proc]
    with contextlib.suppress(psutil.Error):
        members += proc.children(recursive=True)
    return members


def signal_group(pgid: int, procs: Iterable[psutil.Process], sig: int) -> None:
    """Signal the process group, and each known member in case it left the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for member in procs:
        with contextlib.suppress(psutil.Error):
            member.send_signal(sig)


# ---- ports -----------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
