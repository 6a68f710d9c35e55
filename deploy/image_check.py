"""Import every flow module and exit non-zero naming those that fail: the image's smoke test.

The flows image's default command. A flow run pod only imports its own entrypoint, so an image
missing a dependency of another flow would build, push and deploy fine and then fail hours later
on a schedule; running this at build time (or `docker run IMAGE`) fails it at once instead.

In the image it also checks the xgboost build the Dockerfile's XGBOOST_WHEEL asked for
(MLRE_XGBOOST_WHEEL): the CUDA build alone in the GPU image, the CPU-only one in the CPU image.
`build_info()` says how the library was compiled, so this needs no GPU on the build machine.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from importlib import metadata
from pathlib import Path

# The folder holding `flows/` and `mlre/`: the repo root here, /opt/mlre in the image.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Set by the Dockerfile from its XGBOOST_WHEEL build arg; unset outside an image build.
XGBOOST_WHEEL_ENV = "MLRE_XGBOOST_WHEEL"
# Each distribution that provides the `xgboost` module -> whether it is built with CUDA.
XGBOOST_CUDA: dict[str, bool] = {"xgboost-cpu": False, "xgboost": True}


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def xgboost_problems(expected: str) -> list[str]:
    """What is wrong with the installed xgboost for an image built with XGBOOST_WHEEL=expected:
    that distribution alone (both own the same files), built with CUDA exactly when GPU."""
    if expected not in XGBOOST_CUDA:
        return [f"{XGBOOST_WHEEL_ENV}={expected!r} is not one of {sorted(XGBOOST_CUDA)}"]
    problems = []
    installed = [name for name in XGBOOST_CUDA if _installed(name)]
    if installed != [expected]:
        problems.append(
            f"expected only the {expected} distribution, found {installed or 'none'} "
            "(never install both: they overwrite each other's files)"
        )
    try:
        import xgboost

        cuda = bool(xgboost.build_info().get("USE_CUDA", False))
    except Exception as exc:  # a broken install is the finding: report it
        return [*problems, f"xgboost does not load: {exc}"]
    if cuda != XGBOOST_CUDA[expected]:
        built = "with" if cuda else "without"
        problems.append(
            f"xgboost {xgboost.__version__} is built {built} CUDA (build_info USE_CUDA={cuda}), "
            f"but the image asked for {expected}"
        )
    return problems


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


def check_xgboost(expected: str | None) -> int:
    """0 when the xgboost build is the one expected (or nothing is expected), 1 otherwise."""
    if not expected:
        print(f"image check: {XGBOOST_WHEEL_ENV} unset (not an image build): xgboost not checked")
        return 0
    problems = xgboost_problems(expected)
    for problem in problems:
        print(f"image check: {problem}", file=sys.stderr)
    if problems:
        return 1
    cuda = "with" if XGBOOST_CUDA[expected] else "without"
    print(f"image check: xgboost from {expected}, built {cuda} CUDA")
    return 0


def main(root: Path = PROJECT_ROOT, expected_xgboost: str | None = None) -> int:
    """Check the image; 0 when every flow module imports and xgboost is the build asked for
    (`expected_xgboost`, default from MLRE_XGBOOST_WHEEL), 1 (naming what failed) otherwise."""
    if expected_xgboost is None:
        expected_xgboost = os.environ.get(XGBOOST_WHEEL_ENV)
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
    else:
        print(f"image check: all {len(modules)} flow modules import ({', '.join(modules)})")
    xgboost_status = check_xgboost(expected_xgboost)
    return 1 if failures else xgboost_status


if __name__ == "__main__":
    raise SystemExit(main())
