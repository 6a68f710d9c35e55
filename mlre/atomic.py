"""The one way this project publishes a local file: whole or not at all, and still there after a
crash.

The bytes go to a hidden temp file in the target's folder (a leading dot: pyarrow datasets, Feast
and our own readers skip it), are fsynced, renamed over the target, and the folder is fsynced so
the rename itself survives a power cut. On any failure the temp file is removed and the target is
as it was.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Persist a folder's entries (a rename or a new file) across a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(target: Path) -> Path:
    """A hidden, unique temp path next to `target` (same filesystem, so the rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[BinaryIO]:
    """Open a binary stream whose contents replace `target` only if the block finishes."""
    target = Path(target)
    tmp = temp_sibling(target)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        # After a successful replace the temp name is gone; after a failure it must not linger.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_atomic(target: Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Publish `data` (bytes, UTF-8 text, or a writer called with the open stream) at `target`."""
    with atomic_output(target) as out:
        if callable(data):
            data(out)
        else:
            out.write(data.encode() if isinstance(data, str) else data)
    return Path(target)
