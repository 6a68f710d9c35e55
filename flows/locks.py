"""The promotion lock for flows: a Prefect global concurrency limit with one slot per model.

The core (`mlre.registry`) takes any `LockFactory`; this is the one Prefect flows pass, so two
flow runs on different machines promote one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mlre.registry import LOCK_TIMEOUT_S, RegistryError, safe_name

# Threads of one process create a missing Prefect limit one at a time (no 409 noise on the server).
_ENSURE_LOCK = threading.Lock()


def ensure_concurrency_limit(name: str, limit: int = 1) -> None:
    """Create the Prefect global concurrency limit `name` with `limit` slots if it is missing.

    Prefect skips acquisition (no lock at all) when a limit does not exist, so it must exist first.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with _ENSURE_LOCK, get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another process may create it first; the loser sees ObjectAlreadyExists: fine.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit)
                )
            return
    if existing.limit != limit or not existing.active:
        raise RegistryError(
            f"Prefect concurrency limit {name!r} has limit={existing.limit}, "
            f"active={existing.active}; a promotion lock needs limit={limit} and active=true "
            f"(prefect gcl update {name} --limit {limit} && prefect gcl enable {name})."
        )


@contextmanager
def prefect_lock(model_name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """A lock for Prefect flows: the global concurrency limit `mlre-promotion-<model>` (1 slot)."""
    from prefect.concurrency.sync import concurrency

    name = f"mlre-promotion-{safe_name(model_name)}"
    ensure_concurrency_limit(name, 1)
    try:
        # strict=True: a limit deleted between the check and here must fail, not run unlocked.
        with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
            yield
    except TimeoutError as exc:
        raise RegistryError(
            f"Could not take Prefect concurrency slot {name!r} for model {model_name!r} within "
            f"{timeout_s:.0f} s; another promotion holds it (see the Prefect UI, Concurrency)."
        ) from exc
