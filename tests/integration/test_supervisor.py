"""The process supervisor on real child processes: records, recycled PIDs, group stops, waits."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest

from mlre import supervisor
from mlre.errors import PlatformError
from mlre.supervisor import PidRecord
from mlre.waiting import wait_until

pytestmark = pytest.mark.integration

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def _python(code: str, log: Path):
    return supervisor.spawn([sys.executable, "-c", code], log_path=log)


def test_a_record_recognises_its_process_and_not_a_recycled_pid(tmp_path: Path) -> None:
    proc = supervisor.spawn(SLEEPER, log_path=tmp_path / "sleeper.log")
    try:
        record = PidRecord.of("sleeper", proc.pid, SLEEPER, port=1234)
        path = tmp_path / "run" / "sleeper.pid"
        supervisor.write_pid_record(path, record)
        assert supervisor.read_pid_record(path) == record
        assert supervisor.live_process(record).pid == proc.pid
        # Same PID, another create time: what a recycled PID looks like.
        recycled = PidRecord(name="sleeper", pid=proc.pid, create_time=record.create_time - 60)
        assert supervisor.live_process(recycled) is None
    finally:
        supervisor.stop_popen(proc, grace_s=5)
    assert supervisor.live_process(record) is None


def test_a_torn_pid_file_reads_as_no_record(tmp_path: Path) -> None:
    path = tmp_path / "torn.pid"
    path.write_text('{"name": "x", "pid": ')
    assert supervisor.read_pid_record(path) is None
    assert supervisor.read_pid_record(tmp_path / "missing.pid") is None


def test_stop_reaches_a_grandchild_in_the_group(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen({SLEEPER!r}); "
        "print(child.pid, flush=True); time.sleep(300)"
    )
    log = tmp_path / "parent.log"
    proc = _python(code, log)
    grandchild_pid = wait_until(
        lambda: next((int(x) for x in log.read_text().split()[-1:] if x.isdigit()), None),
        timeout_s=30,
        what="grandchild started",
    )
    grandchild = psutil.Process(grandchild_pid)
    supervisor.stop_popen(proc, grace_s=5)
    assert proc.poll() is not None
    assert not supervisor.still_running(grandchild)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "stubborn.log"
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ar' + 'med', flush=True); time.sleep(300)"
    )
    proc = _python(code, log)
    wait_until(lambda: "armed" in log.read_text(), timeout_s=30, what="handler armed")
    sent: list[int] = []
    real = supervisor.signal_group

    def recording(pgid: int, procs, sig: int) -> None:
        sent.append(sig)
        real(pgid, procs, sig)

    monkeypatch.setattr(supervisor, "signal_group", recording)
    assert supervisor.stop_popen(proc, grace_s=0.5) == -signal.SIGKILL
    assert sent == [signal.SIGTERM, signal.SIGKILL]


def test_a_stopped_process_keeps_its_exit_status(tmp_path: Path) -> None:
    proc = supervisor.spawn(SLEEPER, log_path=tmp_path / "sleeper.log")
    assert supervisor.stop_popen(proc, grace_s=5) == -signal.SIGTERM


def test_a_health_wait_fails_fast_with_the_log_when_the_process_exits(tmp_path: Path) -> None:
    log = tmp_path / "doomed.log"
    proc = _python("print('fatal: doomed-marker'); raise SystemExit(3)", log)
    with pytest.raises(PlatformError, match="doomed exited during start-up") as caught:
        supervisor.wait_healthy(
            "doomed", lambda: False, alive=lambda: proc.poll() is None, timeout_s=300, log_path=log
        )
    assert "fatal: doomed-marker" in str(caught.value)
    assert "not healthy" not in str(caught.value)  # the exit was noticed, not the timeout


def test_a_health_wait_that_times_out_names_the_service_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    log.write_text("still starting\n")
    with pytest.raises(PlatformError, match="slow not healthy") as caught:
        supervisor.wait_healthy(
            "slow", lambda: False, alive=lambda: True, timeout_s=0.2, log_path=log
        )
    assert str(log) in str(caught.value)
    assert "still starting" in str(caught.value)


def test_a_free_port_can_be_bound_and_a_held_one_is_in_use() -> None:
    port = supervisor.free_port()
    assert not supervisor.port_in_use("127.0.0.1", port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert supervisor.port_in_use("127.0.0.1", port)


def test_a_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="could not start /no/such/binary"):
        supervisor.spawn(["/no/such/binary"], log_path=tmp_path / "x.log")
