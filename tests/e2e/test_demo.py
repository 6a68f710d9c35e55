"""`mlre demo` twice, as a user runs it: a promoted champion, then a gated decision against it."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import PrivatePlatform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
SMALL = ("--customers", "1500", "--days", "16")


def _run(plat: PrivatePlatform, *args: str) -> str:
    result = plat.mlre(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def test_demo_promotes_then_gates_the_next_challenger(private_platform: PrivatePlatform) -> None:
    plat = private_platform
    first = _run(plat, "demo", *SMALL)
    assert "version 1: PROMOTED to champion" in first
    assert "judged against champion: (none: first model)" in first
    assert f"http://127.0.0.1:{plat.prefect_port}/runs/flow-run/" in first
    assert f"http://127.0.0.1:{plat.mlflow_port}/#/models/fraud-detector" in first
    assert "batch inference:" in first

    second = _run(plat, "demo", *SMALL)
    assert "model fraud-detector version 2:" in second
    assert "judged against champion: 1" in second
    assert ("PROMOTED" in second) or ("REFUSED (champion unchanged)" in second)

    history = _run(plat, "history")
    assert "promote  -     1" in history
    _run(plat, "down")
