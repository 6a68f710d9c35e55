"""E2E fixtures: a private platform (home and ports no other test or person uses)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.private_platform import PrivatePlatform, private_platform_home

__all__ = ["PrivatePlatform"]


@pytest.fixture
def private_platform() -> Iterator[PrivatePlatform]:
    """A fresh home under `.mlre/`; whatever the test leaves running is stopped by PID."""
    with private_platform_home() as plat:
        yield plat
