"""Import every flow module and exit non-zero naming those that fail: the image's smoke test.

The flows image's default command. A flow run pod only imports its own entrypoint, so an image
missing a dependency of another flow would build, push and deploy fine and then fail hours later
on a schedule; running this at build time (or `docker run IMAGE`) fails it at once instead.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

# The folder holding `flows/` and `mlre/`: the repo root here, /opt/mlre in the image.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def flow_modules(root: Path = PROJECT_ROOT) -> list[str]:
    """Dotted names of every module under flows/, found by glob so new flows are never missed."""
    return [
        f"flows.{path.stem}"
        for path in sorted((root / "flows").glob("*.py"))
        if path.stem != "__init__"
    ]


def import_failures(modules: list[str]) -> dict[str, str]:
    """Import each module; map the ones that fail to their error's last traceback line."""
    failures: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure is the finding; report it, keep checking the rest
            failures[name] = traceback.format_exception_only(exc)[-1].strip()
    return failures


def main(root: Path = PROJECT_ROOT) -> int:
    """Check the image; 0 when every flow module imports, 1 (naming them) otherwise."""
    # Import from the project folder, never from a stale copy elsewhere on sys.path.
    sys.path.insert(0, str(root))
    modules = flow_modules(root)
    if not modules:
        print(f"image check: no flow modules under {root / 'flows'}", file=sys.stderr)
        return 1
    failures = import_failures(modules)
    for name, error in failures.items():
        print(f"image check: {name} failed to import: {error}", file=sys.stderr)
    if failures:
        count = f"{len(failures)} of {len(modules)}"
        print(f"image check: {count} flow modules failed", file=sys.stderr)
        return 1
    print(f"image check: all {len(modules)} flow modules import ({', '.join(modules)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
