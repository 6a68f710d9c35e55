"""The MLflow server killed (SIGKILL to its process group) during training and during a promotion.

The module owns a server (the corpus' one stays up). A hook around the real client call kills it
at one exact step; the flow retries, then fails with the project's error naming the server and
what to do; the server restarts on the same port and SQLite store; a re-run converges: one new
version, the champion moved exactly once, an unbroken audit chain and no orphan alias.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from mlflow import MlflowClient

import flows.promotion
import flows.training
from flows.promotion import promote_model
from flows.training import TrainParams, train_model
from mlre import registry, training
from mlre.errors import ServiceUnavailableError
from tests.integration.conftest import build_feature_env, recent_config
from tests.reliability.conftest import exported, platform_env
from tests.reliability.harness import (
    Platform,
    StateChanged,
    assert_message,
    assert_unchanged,
    capture,
    register_versions,
)
from tests.support.faults import Injection, count_calls, inject
from tests.support.mlflow_server import MlflowServer
from tests.support.servers import run_dir, running

pytestmark = pytest.mark.integration
MODEL = "fraud-faults-mlflow"
TRAIN = TrainParams(model_family="logistic_regression", validation_days=2, test_days=2)


@pytest.fixture(scope="module")
def mlflow_faults(servers_root) -> Iterator[MlflowServer]:
    """This module's own MLflow server: the faults kill it."""
    with running(MlflowServer(data_dir=run_dir(servers_root) / "mlflow-faults")) as server:
        yield server


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    platform_exported: Platform,
    mlflow_faults: MlflowServer,
) -> Iterator[Platform]:
    """A store with enough labels to train on, the flows pointed at this module's server, and a
    first trained version as champion. MLflow's own HTTP retries are off: a dead server fails in
    milliseconds, and Prefect's task retries are what is under test."""
    config = recent_config(days=10, n_customers=1_200)
    env = build_feature_env(tmp_path_factory, "local", config)
    uri = mlflow_faults.tracking_uri
    variables = {
        **platform_env(env.settings, uri),
        "MLRE_MODEL_NAME": MODEL,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
    with exported(variables):
        first = train_model(TRAIN)
        promote_model(MODEL, first.version, reason="first champion")
        yield dataclasses.replace(
            platform_exported, settings=env.settings, tracking_uri=uri, model_name=MODEL,
            customer_ids=tuple(int(c) for c in config.customer_ids),
        )  # fmt: skip


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch, mlflow_faults: MlflowServer) -> Iterator[None]:
    """The flows' MLflow tasks retry at once (same retry count; the delays are only waiting),
    and the server is up again after each test, even one that failed before restarting it."""
    for module, name in ((flows.training, "log_and_register"), (flows.promotion, "move_champion")):
        task = getattr(module, name)
        monkeypatch.setattr(module, name, task.with_options(retry_delay_seconds=0))
    yield
    if not mlflow_faults.running:
        mlflow_faults.start()


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


def _orphan_aliases(client: MlflowClient) -> list[str]:
    """Lifecycle aliases pointing at a version the audit trail never made champion."""
    recorded = {r.to_version for r in registry.history(client, MODEL)}
    aliases = _aliases(client)
    return [
        f"orphan alias {alias}={aliases[alias]} (audit trail: {sorted(recorded)})"
        for alias in (registry.CHAMPION, registry.PREVIOUS_CHAMPION)
        if alias in aliases and aliases[alias] not in recorded
    ]


def _chain_problems(client: MlflowClient, champion: str, previous: str) -> list[str]:
    """How the audit trail and aliases differ from one clean promotion previous -> champion."""
    records = registry.history(client, MODEL)
    problems = [f"broken chain: {a} -> {b}" for a, b in itertools.pairwise(records)
                if b.from_version != a.to_version]  # fmt: skip
    if [r.seq for r in records] != list(range(1, len(records) + 1)):
        problems.append(f"audit records are not numbered 1..n: {records}")
    if [r.to_version for r in records].count(champion) != 1:
        problems.append(f"version {champion} was made champion other than once: {records}")
    if (records[-1].from_version, records[-1].to_version) != (previous, champion):
        problems.append(f"last record is not {previous} -> {champion}: {records[-1]}")
    expected = {registry.CHAMPION: champion, registry.PREVIOUS_CHAMPION: previous}
    if _aliases(client) != expected:
        problems.append(f"aliases are {_aliases(client)}, expected {expected}")
    return problems


def assert_no_orphan_alias(client: MlflowClient) -> None:
    """Every lifecycle alias points at a version the audit trail says became champion."""
    if orphans := _orphan_aliases(client):
        raise StateChanged("\n".join(orphans))


def assert_converged(client: MlflowClient, champion: str, previous: str) -> None:
    """Champion and previous as expected, set exactly once, the audit chain unbroken."""
    if problems := _chain_problems(client, champion, previous) + _orphan_aliases(client):
        raise StateChanged("The registry did not converge:\n- " + "\n- ".join(problems))


def assert_failed_clearly(
    state: Any, killed: Injection, attempts: Injection, tries: int, *, names: list[str], fix: str
) -> None:
    """The fault fired, the step ran `tries` times (Prefect retried it), and the flow failed
    with the project's transient error naming what failed and what to do."""
    assert killed.fired
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert type(error) is ServiceUnavailableError, repr(error)
    assert_message(error, names=names, fix=fix)
    assert attempts.calls == tries


@pytest.fixture
def champion(served: Platform) -> str:
    """The champion version before the fault."""
    return _aliases(served.client())[registry.CHAMPION]


@pytest.mark.fault("MLflow killed during model registration")
def test_mlflow_killed_at_registration_retries_then_fails_and_a_rerun_converges(
    served: Platform, mlflow_faults: MlflowServer, champion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = capture(served)
    # The run and its artifacts are logged; the server dies as the version is about to be created.
    killed = inject(
        monkeypatch, MlflowClient, "_create_model_version", mlflow_faults.kill, after=False
    )

    attempts = count_calls(monkeypatch, training, "log_training_run")

    state = train_model(TRAIN, return_state=True)

    assert_failed_clearly(
        state, killed, attempts, 1 + 3,
        names=[mlflow_faults.tracking_uri, f"model '{MODEL}'"], fix="re-run train-model",
    )  # fmt: skip
    mlflow_faults.start()  # same port, same SQLite store and artifacts
    assert_unchanged(before, capture(served))  # no version, alias or audit record half-written

    rerun = train_model(TRAIN)
    promote_model(MODEL, rerun.version, reason="retrained after the outage")
    assert_converged(served.client(), champion=rerun.version, previous=champion)


@pytest.mark.fault("MLflow killed mid-promotion")
def test_mlflow_killed_between_alias_writes_leaves_no_orphan_and_a_rerun_converges(
    served: Platform, champion: str, mlflow_faults: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = served.client()
    source = client.get_model_version(MODEL, champion).source
    (candidate,) = register_versions(served.tracking_uri, source, MODEL, 1)
    # Killed right after the champion alias moved: the audit record is stored (it goes first),
    # previous-champion is not moved yet.
    killed = inject(
        monkeypatch, MlflowClient, "set_registered_model_alias", mlflow_faults.kill,
        match=lambda args, kwargs: registry.CHAMPION in args,
    )  # fmt: skip

    attempts = count_calls(monkeypatch, registry, "promote")

    state = promote_model(MODEL, candidate, reason="passed the gate", return_state=True)

    assert_failed_clearly(
        state, killed, attempts, 1 + 2,
        names=[mlflow_faults.tracking_uri, f"'{MODEL}'", f"version {candidate}"], fix="re-run",
    )  # fmt: skip
    mlflow_faults.start()
    assert_no_orphan_alias(client)

    promote_model(MODEL, candidate, reason="passed the gate")
    assert_converged(client, champion=candidate, previous=champion)
