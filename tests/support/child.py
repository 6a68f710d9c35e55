"""Run one project function in a child process under a real OS-level fault.

`run_in_child("mlre.prediction_log:write_predictions", kwargs, workdir, ...)` pickles the keyword
arguments, starts `python -m tests.support.child` and reports what the call raised
(`start_child`/`finish_child` run several at once):

- `file_size_limit`: the child sets RLIMIT_FSIZE and ignores SIGXFSZ, so a write past the limit
  fails with EFBIG from the kernel: a disk that is full for this process, no root needed.
- `read_only`: the folder is read-only for the child: bind-mounted read-only in a private mount
  namespace when we are root (chmod does not stop root), chmod-ed read-only otherwise.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# In a private mount namespace: bind the folder onto itself, remount that read-only, run argv.
_READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


@dataclass(frozen=True)
class ChildOutcome:
    """What the call in the child raised (`error_type` None: it returned)."""

    error_type: str | None
    message: str
    returncode: int
    stderr: str


def read_only_unsupported() -> str | None:
    """Why a read-only folder cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return None
    if shutil.which("unshare") is None:
        return "running as root (chmod does not stop root) and util-linux `unshare` is missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return (
            "running as root (chmod does not stop root) without the right to create a mount "
            f"namespace for a read-only mount (CAP_SYS_ADMIN): {probe.stderr.decode().strip()}"
        )
    return None


@contextlib.contextmanager
def _chmod_read_only(folder: Path) -> Iterator[None]:
    """Every folder under `folder` without write permission, put back afterwards."""
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    modes = {path: path.stat().st_mode for path in folders}
    try:
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def start_child(
    target: str,
    kwargs: dict[str, Any],
    job: Path,
    *,
    file_size_limit: int | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """Start `module:function(**kwargs)` in a fresh interpreter (stdin and stdout are pipes)."""
    job.write_bytes(pickle.dumps({"target": target, "kwargs": kwargs, "fsize": file_size_limit}))
    argv = [*prefix, sys.executable, "-m", "tests.support.child", str(job)]
    return subprocess.Popen(
        argv, cwd=PROJECT_ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish_child(child: subprocess.Popen[str], timeout_s: float = 120) -> ChildOutcome:
    """Wait for a child and read its report (the last line it printed)."""
    try:
        out, err = child.communicate(timeout=timeout_s)
    finally:
        if child.poll() is None:
            child.kill()
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"child {child.args} said nothing (rc {child.returncode}):\n{err}")
    report = json.loads(lines[-1])
    return ChildOutcome(report["error_type"], report["message"], child.returncode, err)


def run_in_child(
    target: str,
    kwargs: dict[str, Any],
    workdir: Path,
    *,
    file_size_limit: int | None = None,
    read_only: Path | None = None,
    timeout_s: float = 120,
) -> ChildOutcome:
    """Call `module:function(**kwargs)` in a fresh interpreter under the given fault."""
    prefix: tuple[str, ...] = ()
    guard: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if read_only is not None and os.geteuid() == 0:
        prefix = ("unshare", "--mount", "--propagation", "private",
                  "sh", "-c", _READ_ONLY_MOUNT, "sh", str(read_only))  # fmt: skip
    elif read_only is not None:
        guard = _chmod_read_only(read_only)
    with guard:
        child = start_child(
            target, kwargs, workdir / "child-job.pickle", file_size_limit=file_size_limit,
            prefix=prefix,
        )  # fmt: skip
        return finish_child(child, timeout_s)


def _limit_file_size(limit: int) -> None:
    """Writes past `limit` bytes fail with EFBIG instead of killing the process (SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def main(argv: list[str]) -> int:
    """Child side: load the job, apply the limit, call the target, print one JSON line."""
    job = pickle.loads(Path(argv[0]).read_bytes())
    module_name, function_name = job["target"].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    if job["fsize"] is not None:
        _limit_file_size(job["fsize"])
    try:
        function(**job["kwargs"])
    except Exception as exc:  # reported to the parent, which asserts on it
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        print(json.dumps({"error_type": kind, "message": str(exc)}))
        return 1
    print(json.dumps({"error_type": None, "message": ""}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
