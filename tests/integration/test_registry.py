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
from typing import Any

import mlflow
import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from sklearn.linear_model import LogisticRegression

from flows.locks import prefect_lock
from mlre.errors import ServiceUnavailableError
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


# --------------------------------------------------------------------------------------------
# Without a lock: promotions forced to read the same state before either writes
# --------------------------------------------------------------------------------------------

WAIT_S = 60.0  # only bounds a broken choreography; every wait below is for an event
Hook = Callable[[], object]


def _nothing() -> None:
    return None


class _Scripted:
    """An MlflowClient that runs `before` / `after` hooks around its first call of `method` (or
    calls `instead`): the test decides at which exact call a promotion waits (no sleeps)."""

    def __init__(
        self,
        client: MlflowClient,
        method: str,
        before: Hook = _nothing,
        after: Hook = _nothing,
        instead: Callable[..., Any] | None = None,
    ) -> None:
        self._client, self._method = client, method
        self._before, self._after, self._instead = before, after, instead
        self._fired = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._method or self._fired:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self._fired = True
            self._before()
            try:
                return (self._instead or real)(*args, **kwargs)
            finally:
                self._after()

        return call


def _unlocked(_name: str) -> contextlib.nullcontext[None]:
    return contextlib.nullcontext()


def _awaited(event: threading.Event, what: str) -> Hook:
    """A hook that waits for `event` (set by the other promotion's thread)."""

    def wait() -> None:
        assert event.wait(WAIT_S), f"the other promotion never {what}"

    return wait


def _then(*hooks: Hook) -> Hook:
    return lambda: [hook() for hook in hooks]


# A promotion stores its audit record with its first (and only) set_registered_model_tag call,
# after every read its decision needs: holding both promotions there means both read the registry
# before either wrote anything.
STORE_RECORD = "set_registered_model_tag"
Outcome = AuditRecord | BaseException


def _race(
    clients: dict[str, Any], name: str, finished: dict[str, threading.Event] | None = None
) -> dict[str, Outcome]:
    """Promote each version from its own thread, unlocked, each through its own client; what each
    returned or raised (any exception: the tests assert its exact type). `finished[v]` is set
    when version v's promotion has returned or raised."""
    finished = finished or {}

    def run(version: str) -> Outcome:
        try:
            return _promote(clients[version], name, version, _unlocked)
        except Exception as exc:  # returned: the tests assert its exact type
            return exc
        finally:
            if version in finished:
                finished[version].set()

    with ThreadPoolExecutor(len(clients)) as pool:
        futures = {version: pool.submit(run, version) for version in clients}
    return {version: future.result() for version, future in futures.items()}


def _raced_error(outcome: Outcome, name: str, version: str) -> str:
    """The outcome is the project's RegistryError naming the model, its version, the lock and
    what to do; never a raw MLflow exception."""
    assert type(outcome) is RegistryError, repr(outcome)
    message = str(outcome)
    for part in (f"Model {name!r}", f"to version {version}", "promotion lock", "retry"):
        assert part in message, (part, message)
    return message


def _trail(client: MlflowClient, name: str) -> list[tuple[int | None, str, str | None, str]]:
    return [(r.seq, r.action, r.from_version, r.to_version) for r in history(client, name)]


def _champion_then_two(
    client: MlflowClient, register: Register, lock: LockFactory
) -> tuple[str, str, str, str]:
    """A model whose v1 is champion (audit.000001) and two more READY versions a, b."""
    name, (v1, a, b) = register(3)
    _promote(client, name, v1, lock)
    return name, v1, a, b


def test_unlocked_promotions_that_both_store_a_record_the_later_writer_wins(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    """Both read champion v1, then A stores audit.000002, then B stores it too (a sequential
    write: the server overwrites A's), then both go on. A's check before moving any alias sees
    its record gone; B's sees its own record, the last, and the aliases as read."""
    name, v1, a, b = _champion_then_two(client, register, lock)
    both_read = threading.Barrier(2, timeout=WAIT_S)
    a_stored, b_stored = threading.Event(), threading.Event()
    clients = {
        a: _Scripted(client, STORE_RECORD, before=both_read.wait,
                     after=_then(a_stored.set, _awaited(b_stored, "stored its record"))),
        b: _Scripted(client, STORE_RECORD,
                     before=_then(both_read.wait, _awaited(a_stored, "stored its record")),
                     after=b_stored.set),
    }  # fmt: skip

    outcomes = _race(clients, name)

    # The first writer is the one detected, and it had moved nothing.
    message = _raced_error(outcomes[a], name, a)
    assert "audit record audit.000002 was overwritten" in message
    assert "Nothing it wrote was left to undo" in message
    # The later writer survives: the registry holds exactly what it wrote, nothing of A.
    survivor = outcomes[b]
    assert isinstance(survivor, AuditRecord), repr(survivor)
    assert (survivor.seq, survivor.from_version, survivor.to_version) == (2, v1, b)
    assert _aliases(client, name) == {CHAMPION: b, PREVIOUS_CHAMPION: v1}
    assert _trail(client, name) == [(1, "promote", None, v1), (2, "promote", v1, b)]
    assert history(client, name)[-1] == survivor
    assert client.get_model_version(name, a).aliases == []


def test_unlocked_promotion_finishing_in_between_is_caught_by_the_later_one(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    """Both read champion v1, then A runs to its end, then B stores its record: on A's number,
    over A's record. B's check sees the aliases moved and undoes itself before moving any."""
    name, v1, a, b = _champion_then_two(client, register, lock)
    both_read = threading.Barrier(2, timeout=WAIT_S)
    finished = {a: threading.Event(), b: threading.Event()}
    clients = {
        a: _Scripted(client, STORE_RECORD, before=both_read.wait),
        b: _Scripted(client, STORE_RECORD,
                     before=_then(both_read.wait, _awaited(finished[a], "finished"))),
    }  # fmt: skip

    outcomes = _race(clients, name, finished)

    survivor = outcomes[a]
    assert isinstance(survivor, AuditRecord), repr(survivor)
    assert (survivor.seq, survivor.from_version, survivor.to_version) == (2, v1, a)
    message = _raced_error(outcomes[b], name, b)
    assert f"champion / previous-champion are {a} / {v1}, not {v1} / None as read" in message
    assert "this one overwrote it" in message
    assert "Undone: its audit record audit.000002 removed" in message
    # B took back everything it wrote: the aliases are A's. A's record, though, was overwritten
    # by B's before anyone could know: the check turns the race into an error naming it, it
    # cannot give back what another writer lost. That is what the promotion lock is for.
    assert _aliases(client, name) == {CHAMPION: a, PREVIOUS_CHAMPION: v1}
    assert _trail(client, name) == [(1, "promote", None, v1)]
    assert client.get_model_version(name, b).aliases == []


def _unique_clash(name: str, key: str) -> Callable[..., Any]:
    """What the server answers the loser of two simultaneous inserts of the same tag (SQLite)."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise RestException({
            "error_code": "BAD_REQUEST",
            "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags"
            f".workspace, registered_model_tags.key, registered_model_tags.name [{key}, {name}]",
        })  # fmt: skip

    return refuse


def test_unlocked_write_the_server_refuses_is_a_registry_error_and_changes_nothing(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    """Both read champion v1, then A stores audit.000002 and B's store of the same tag is
    refused by the server the way SQLite refuses the loser of two simultaneous inserts (the
    exact error that used to escape as a raw RestException). Inserting simultaneously inside the
    server cannot be forced from a client, so the refusal is the server's answer, replayed."""
    name, v1, a, b = _champion_then_two(client, register, lock)
    both_read = threading.Barrier(2, timeout=WAIT_S)
    a_stored, b_refused = threading.Event(), threading.Event()
    clients = {
        a: _Scripted(client, STORE_RECORD, before=both_read.wait,
                     after=_then(a_stored.set, _awaited(b_refused, "tried to store"))),
        b: _Scripted(client, STORE_RECORD,
                     before=_then(both_read.wait, _awaited(a_stored, "stored its record")),
                     after=b_refused.set, instead=_unique_clash(name, "audit.000002")),
    }  # fmt: skip

    outcomes = _race(clients, name)

    message = _raced_error(outcomes[b], name, b)
    assert "failed writing audit record audit.000002" in message
    assert "UNIQUE constraint failed" in message
    assert "Nothing was changed" in message
    assert isinstance(outcomes[b].__cause__, RestException)
    survivor = outcomes[a]
    assert isinstance(survivor, AuditRecord), repr(survivor)
    assert _aliases(client, name) == {CHAMPION: a, PREVIOUS_CHAMPION: v1}
    assert _trail(client, name) == [(1, "promote", None, v1), (2, "promote", v1, a)]
    assert history(client, name)[-1] == survivor


def _no_answer(*_args: Any, **_kwargs: Any) -> Any:
    """How the MLflow client fails when the server does not answer (a refused connection)."""
    try:
        raise requests.exceptions.ConnectionError("Connection refused")
    except requests.exceptions.ConnectionError as exc:
        raise MlflowException(f"API request failed with exception {exc}") from exc


def test_a_server_that_does_not_answer_stays_service_unavailable(
    client: MlflowClient, register: Register, lock: LockFactory
) -> None:
    """Not an answer, so not a conflict: the transient error flows retry, nothing written."""
    name, v1, a, _b = _champion_then_two(client, register, lock)
    scripted = _Scripted(client, STORE_RECORD, instead=_no_answer)

    with pytest.raises(ServiceUnavailableError, match=rf"did not answer.*{name}.*version {a}"):
        _promote(scripted, name, a, lock)

    assert _aliases(client, name) == {CHAMPION: v1}
    assert _trail(client, name) == [(1, "promote", None, v1)]


def test_ten_unlocked_threads_raise_only_registry_errors(
    client: MlflowClient, register: Register
) -> None:
    """Free-running threads: the interleaving differs run to run, what is asserted holds for
    every one of them. Each promotion re-reads the registry after storing its record and after
    moving the aliases (its record intact and the last one, the aliases as read / as written), so
    when all report ok no two shared a record number and the registry is consistent."""
    name, versions = register(10)
    start = threading.Barrier(len(versions), timeout=WAIT_S)
    clients = {v: _Scripted(client, "get_registered_model", before=start.wait) for v in versions}

    outcomes = _race(clients, name)

    errors = {v: o for v, o in outcomes.items() if not isinstance(o, AuditRecord)}
    for version, error in errors.items():
        _raced_error(error, name, version)
    print(f"\nunlocked race: {len(errors)}/10 detected, {len(history(client, name))} records")
    if not errors:
        _assert_consistent(client, name, len(versions))


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
