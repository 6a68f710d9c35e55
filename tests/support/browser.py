"""Headless Chromium (Debian's package) driven from Python: rendered DOM and screenshots.

Started with the flags this workplace needs (no sandbox as root, no background networking) and a
throwaway profile under `.mlre/`, so nothing lands in the home folder.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from mlre.settings import PROJECT_ROOT

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1100",
    "--virtual-time-budget=20000",  # let the single-page apps fetch and render
)


def chromium() -> str:
    """Path of the chromium binary, or a clear error saying how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError(
            "chromium is not installed: `make test` installs it as root "
            "(apt-get install -y chromium); on a laptop install Debian/Ubuntu's chromium package."
        )
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    profile_root = PROJECT_ROOT / ".mlre" / "tmp"
    profile_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=profile_root, prefix="chromium-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def rendered_dom(url: str) -> str:
    """The page's DOM after its scripts ran."""
    return _run("--dump-dom", url).stdout


def screenshot(url: str, path: Path, *, height: int | None = None) -> Path:
    """A PNG of the rendered page (`height`: a taller window, for long pages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (f"--window-size=1500,{height}",) if height else ()
    _run(*size, f"--screenshot={path}", url)
    return path
