"""Run every benchmark module's `main()` in turn (`python -m bench`, `make bench`).

Modules are discovered, not listed, so a new `bench/<name>.py` with a `main()` joins the run.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from collections.abc import Callable
from pathlib import Path


def benchmark_modules() -> list[str]:
    """Names of the public modules in this package, sorted for a stable order."""
    folder = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([folder]) if not m.name.startswith("_"))


def run_all() -> int:
    """Import each module and call its `main()`; one failing benchmark does not stop the rest."""
    failed = []
    for name in benchmark_modules():
        module = importlib.import_module(f"bench.{name}")
        entry: Callable[[], object] | None = getattr(module, "main", None)
        if entry is None:
            continue
        print(f"[bench] {name} ...", flush=True)
        began = time.perf_counter()
        try:
            entry()
        except Exception as exc:  # report and go on; the exit code still says it failed
            print(f"[bench] {name} FAILED: {exc!r}", flush=True)
            failed.append(name)
            continue
        print(f"[bench] {name} done in {time.perf_counter() - began:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_all())
