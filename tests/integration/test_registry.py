"""Promotion, rollback and the audit trail against a real MLflow server, races included."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from flows.locks import prefect_lock
from mlre.mlflow_uri import global_tracking_uri
from mlre.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_PASSED_TAG,
    GATE_REASONS_TAG,
    PREVIOUS_CHAMPION,
    ROLLED_BACK_TAG,
    AuditRecord,
    LockFactory,
    RegistryError,
    champion_version,
    file_lock,
    history,
    mark_challenger,
    promote,
    record_refusal,
    rollback,
)
from mlre.settings import get_settings
from tests.support.mlflow_server import MlflowServer

pytestmark = pytest.mark.integration

Register = Callable[[int], tuple[str, list[str]]]


@pytest.fixture(scope="module")
def client(mlflow_server: MlflowServer) -> Iterator[MlflowClient]:
    """A client of the session server; the global tracking URI points there for log_model."""
    with global_tracking_uri(mlflow_server.tracking_uri):
        yield MlflowClient(mlflow_server.tracking_uri)


@pytest.fixture(scope="module")
def model_uri(client: MlflowClient) -> str:
    """One tiny logged sklearn model; every test registers versions of it (fast, no upload)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    y = (x[:, 0] > 0).astype(int)
    mlflow.set_experiment("registry-tests")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(x, y), name="model", pip_requirements=["scikit-learn"]
        )
    return info.model_uri


@pytest.fixture
def register(client: MlflowClient, model_uri: str) -> Register:
    """`register(n)` -> (a fresh model name, its n READY versions)."""

    def build(n: int) -> tuple[str, list[str]]:
        name = f"fraud-{uuid.uuid4().hex[:8]}"
        versions = [mlflow.register_model(model_uri, name).version for _ in range(n)]
        return name, [str(v) for v in versions]

    return build


@pytest.fixture
def lock() -> LockFactory:
    return file_lock(get_settings())


def _promote(client: MlflowClient, name: str, version: str, lock: LockFactory, **kw: object):
    return promote(
        client, name, version, reason=f"test promotes {version}", run_id="pytest",
        actor="tester", lock=lock, **kw,
    )  # fmt: skip


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).aliases)


def test_first_promotion_sets_champion_without_previous(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1,) = register(1)
    assert champion_version(client, name) is None

    record = _promote(client, name, v1, lock)

    assert _aliases(client, name) == {CHAMPION: v1}
    assert record.action == "promote"
    assert record.from_version is None
    assert record.seq == 1
    champion = champion_version(client, name)
    assert champion is not None
    assert champion.version == v1


def test_second_promotion_keeps_previous_and_moves_challenger(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1, v2, v3) = register(3)
    _promote(client, name, v1, lock)
    mark_challenger(client, name, v2, ["auc 0.91 >= 0.90"])
    assert _aliases(client, name)[CHALLENGER] == v2
    assert client.get_model_version(name, v2).tags[GATE_PASSED_TAG] == "true"

    record = _promote(client, name, v2, lock)

    assert _aliases(client, name) == {CHAMPION: v2, PREVIOUS_CHAMPION: v1}
    assert (record.from_version, record.to_version) == (v1, v2)
    # A challenger that is not the promoted version stays where it is.
    mark_challenger(client, name, v3, ["auc 0.92"])
    _promote(client, name, v1, lock, force=False)
    assert _aliases(client, name) == {CHAMPION: v1, PREVIOUS_CHAMPION: v2, CHALLENGER: v3}


def test_promoting_the_champion_again_is_a_noop(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1,) = register(1)
    _promote(client, name, v1, lock)

    again = _promote(client, name, v1, lock)

    assert again.action == "noop"
    assert not again.recorded
    assert "already champion" in again.reason
    assert len(history(client, name)) == 1
    assert _aliases(client, name) == {CHAMPION: v1}


def test_rollback_restores_previous_and_records_why(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1, v2) = register(2)
    _promote(client, name, v1, lock)
    _promote(client, name, v2, lock)

    record = rollback(
        client, name, reason="p95 latency doubled", run_id="incident-7", actor="oncall", lock=lock
    )

    assert _aliases(client, name) == {CHAMPION: v1}
    assert (record.action, record.from_version, record.to_version) == ("rollback", v2, v1)
    assert history(client, name)[-1] == record
    assert history(client, name)[-1].reason == "p95 latency doubled"
    assert client.get_model_version(name, v2).tags[ROLLED_BACK_TAG] == "true"
    # One step only: a second rollback is refused and changes nothing.
    with pytest.raises(RegistryError, match="no 'previous-champion'"):
        rollback(client, name, reason="again", run_id="r", actor="a", lock=lock)
    assert _aliases(client, name) == {CHAMPION: v1}
    # The rolled-back version needs force to come back.
    with pytest.raises(RegistryError, match="rolled back"):
        _promote(client, name, v2, lock)
    assert _promote(client, name, v2, lock, force=True).to_version == v2


def test_rollback_without_previous_champion_is_refused(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1,) = register(1)
    with pytest.raises(RegistryError, match=name):
        rollback(client, name, reason="r", run_id="r", actor="a", lock=lock)
    _promote(client, name, v1, lock)
    with pytest.raises(RegistryError, match="previous-champion"):
        rollback(client, name, reason="r", run_id="r", actor="a", lock=lock)
    assert _aliases(client, name) == {CHAMPION: v1}
    assert len(history(client, name)) == 1


def test_refused_version_is_not_promoted(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1, v2) = register(2)
    _promote(client, name, v1, lock)
    record_refusal(client, name, v2, ["auc 0.70 < 0.90", "drift on amount"])
    tags = client.get_model_version(name, v2).tags
    assert tags[GATE_PASSED_TAG] == "false"
    assert "drift on amount" in tags[GATE_REASONS_TAG]
    assert _aliases(client, name) == {CHAMPION: v1}  # a refusal never touches aliases

    with pytest.raises(RegistryError, match=rf"{name}.*version {v2}.*gate refused.*force"):
        _promote(client, name, v2, lock)

    assert _aliases(client, name) == {CHAMPION: v1}
    assert len(history(client, name)) == 1
    assert _promote(client, name, v2, lock, force=True).to_version == v2


def test_missing_model_or_version_is_named(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1,) = register(1)
    with pytest.raises(RegistryError, match=rf"{name}.*no version 99.*existing versions: \['1'\]"):
        _promote(client, name, "99", lock)
    with pytest.raises(RegistryError, match="'no-such-model' does not exist"):
        _promote(client, "no-such-model", v1, lock)
    assert _aliases(client, name) == {}
    assert champion_version(client, "no-such-model") is None


def test_deleted_champion_is_a_clear_error(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1, v2) = register(2)
    _promote(client, name, v1, lock)
    # MLflow drops a deleted version's aliases, so "no champion" must be told apart from "lost".
    client.delete_model_version(name, v1)

    with pytest.raises(RegistryError, match=rf"no 'champion' alias.*version {v1}.*deleted"):
        champion_version(client, name)
    # The way out the message names works.
    _promote(client, name, v2, lock)
    champion = champion_version(client, name)
    assert champion is not None
    assert champion.version == v2


def test_alias_row_pointing_at_a_missing_version_is_a_clear_error(
    client: MlflowClient, register: Register, lock: LockFactory, mlflow_server: MlflowServer
) -> None:
    name, (v1,) = register(1)
    _promote(client, name, v1, lock)
    # A dangling alias row (an older server, a hand-edited database): point it at version 99.
    with contextlib.closing(sqlite3.connect(mlflow_server.db_path)) as db, db:
        db.execute(
            "UPDATE registered_model_aliases SET version = 99 WHERE name = ? AND alias = ?",
            (name, CHAMPION),
        )

    with pytest.raises(RegistryError, match=r"Alias 'champion'.*version 99.*no\s+longer exists"):
        champion_version(client, name)


def test_history_is_complete_and_ordered(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, (v1, v2, v3) = register(3)
    _promote(client, name, v1, lock)
    _promote(client, name, v2, lock)
    rollback(client, name, reason="bad canary", run_id="r", actor="oncall", lock=lock)
    _promote(client, name, v3, lock)

    records = history(client, name)

    assert [(r.seq, r.action, r.from_version, r.to_version) for r in records] == [
        (1, "promote", None, v1),
        (2, "promote", v1, v2),
        (3, "rollback", v2, v1),
        (4, "promote", v1, v3),
    ]
    assert [r.when for r in records] == sorted(r.when for r in records)
    assert all(r.when.endswith("+00:00") for r in records)


def _assert_consistent(client: MlflowClient, name: str, promoted: int) -> list[AuditRecord]:
    """One champion, previous-champion its predecessor, and an unbroken chain of records."""
    records = history(client, name)
    assert [r.seq for r in records] == list(range(1, promoted + 1))
    assert records[0].from_version is None
    for before, after in itertools.pairwise(records):
        assert after.from_version == before.to_version
    aliases = _aliases(client, name)
    assert aliases[CHAMPION] == records[-1].to_version
    assert aliases[PREVIOUS_CHAMPION] == records[-1].from_version
    assert aliases[CHAMPION] != aliases[PREVIOUS_CHAMPION]
    return records


@pytest.mark.fault("10 concurrent promotions")
def test_ten_threads_racing_with_the_file_lock(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    name, versions = register(10)
    start = threading.Barrier(len(versions))

    def race(version: str) -> AuditRecord:
        start.wait()
        return _promote(client, name, version, lock)

    with ThreadPoolExecutor(len(versions)) as pool:
        results = list(pool.map(race, versions))  # re-raises any exception

    assert all(r.action == "promote" for r in results)
    records = _assert_consistent(client, name, len(versions))
    assert sorted(r.to_version for r in records) == sorted(versions)


_CHILD = textwrap.dedent(
    """
    import sys
    from mlflow import MlflowClient
    from mlre.registry import file_lock, promote
    from mlre.settings import Settings
    uri, name, home, *versions = sys.argv[1:]
    client, lock = MlflowClient(uri), file_lock(Settings(home=home))
    client.get_registered_model(name)  # warm up: MLflow loads its plugins on the first request
    print("ready", flush=True)
    sys.stdin.readline()  # the parent says go once every child is ready: a real race
    for version in versions:
        promote(client, name, version, reason="race", run_id="proc", actor="child", lock=lock)
    """
)


@pytest.mark.slow  # four fresh interpreters import mlflow and feast: ~45 s on 2 cores
@pytest.mark.fault("8 promotions racing from 4 processes")
def test_four_processes_racing_with_the_file_lock(
    client: MlflowClient, register: Register, mlflow_server: MlflowServer
) -> None:
    name, versions = register(8)
    home = str(get_settings().home)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, mlflow_server.tracking_uri, name, home, *versions[i::4]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        errors = [child.communicate(timeout=120)[1] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()

    assert [child.returncode for child in children] == [0, 0, 0, 0], errors
    records = _assert_consistent(client, name, len(versions))
    assert sorted(r.to_version for r in records) == sorted(versions)


def test_without_a_lock_the_post_state_check_catches_races(
    client: MlflowClient, register: Register
) -> None:
    """Shows the race the lock prevents; asserts only that nothing passes unverified."""
    name, versions = register(10)
    start = threading.Barrier(len(versions))

    def race(version: str) -> str:
        start.wait()
        try:
            _promote(client, name, version, lambda _name: contextlib.nullcontext())
        except RegistryError:
            return "detected"
        return "ok"

    with ThreadPoolExecutor(len(versions)) as pool:
        outcomes = list(pool.map(race, versions))

    records, aliases = history(client, name), _aliases(client, name)
    print(f"\nunlocked race: {outcomes.count('detected')}/10 detected, {len(records)} records")
    print(f"unlocked race: aliases {aliases}")
    assert set(outcomes) <= {"ok", "detected"}


@pytest.mark.fault("4 concurrent promotions (Prefect lock)")
def test_prefect_lock_creates_a_one_slot_limit_and_serialises(
    client: MlflowClient, register: Register, prefect_harness: None
) -> None:
    from prefect.client.orchestration import get_client

    name, versions = register(4)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda v: _promote(client, name, v, prefect_lock), versions))

    with get_client(sync_client=True) as prefect:
        limit = prefect.read_global_concurrency_limit_by_name(f"mlre-promotion-{name}")
    assert limit.limit == 1
    _assert_consistent(client, name, len(versions))
