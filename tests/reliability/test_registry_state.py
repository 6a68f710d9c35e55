"""Registry states that must stop a flow: no champion, aliases lost with deleted versions,
versions the gate refused or that were rolled back, versions that do not exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.evaluation import EvaluateParams, evaluate_model
from flows.inference import BatchInferenceParams, batch_inference
from flows.promotion import promote_model, rollback_model
from mlre import registry
from mlre.errors import InferenceError
from mlre.registry import RegistryError
from tests.reliability.harness import Platform, assert_refused, promote, register_versions

pytestmark = pytest.mark.integration
INPUT_PATH = "registry state"


def _model(platform: Platform, name: str, versions: int = 2) -> tuple[str, list[str]]:
    """A registered model with `versions` READY versions, each promoted in turn."""
    registered = register_versions(platform.tracking_uri, platform.model_uri, name, versions)
    client = platform.client()
    for version in registered:
        promote(client, platform.settings, name, version)
    return name, registered


@pytest.fixture(scope="module")
def champion_deleted(platform: Platform) -> tuple[str, list[str]]:
    """v2 was champion, then deleted: MLflow dropped its alias; v1 is previous-champion."""
    name, (v1, v2) = _model(platform, "fraud-champion-deleted")
    platform.client().delete_model_version(name, v2)
    return name, [v1, v2]


@pytest.fixture(scope="module")
def previous_deleted(platform: Platform) -> tuple[str, list[str]]:
    """v1 was previous-champion, then deleted: nothing is left to roll back to."""
    name, (v1, v2) = _model(platform, "fraud-previous-deleted")
    platform.client().delete_model_version(name, v1)
    return name, [v1, v2]


@pytest.fixture(scope="module")
def rolled_back(platform: Platform) -> tuple[str, list[str]]:
    """v2 was promoted, then rolled back to v1 (v2 carries rolled_back=true)."""
    name, (v1, v2) = _model(platform, "fraud-rolled-back")
    registry.rollback(
        platform.client(), name, reason="canary looked wrong", run_id="pytest", actor="pytest",
        lock=registry.file_lock(platform.settings),
    )  # fmt: skip
    return name, [v1, v2]


def test_batch_inference_without_a_champion_is_refused(platform: Platform) -> None:
    name = platform.no_champion_model
    params = BatchInferenceParams(model_name=name)
    assert_refused(
        platform, lambda: batch_inference(params), InferenceError,
        names=[f"'{name}'", "champion"], fix=f"mlre promote {name} VERSION",
    )  # fmt: skip


def test_rollback_without_a_previous_champion_is_refused(platform: Platform) -> None:
    name = platform.no_champion_model
    assert_refused(
        platform, lambda: rollback_model(name), RegistryError,
        names=[f"'{name}'", "'previous-champion'"], fix="promote a specific version instead",
    )  # fmt: skip


def test_promote_without_a_challenger_is_refused(platform: Platform) -> None:
    name = platform.no_champion_model
    assert_refused(
        platform, lambda: promote_model(name), RegistryError,
        names=[f"'{name}'", "'challenger'"], fix="run evaluate-model first",
    )  # fmt: skip


def test_batch_inference_with_a_deleted_champion_is_refused(
    platform: Platform, champion_deleted: tuple[str, list[str]]
) -> None:
    name, (_, deleted) = champion_deleted
    params = BatchInferenceParams(model_name=name)
    assert_refused(
        platform, lambda: batch_inference(params), RegistryError,
        names=[f"'{name}'", "'champion'", f"version {deleted}"],
        fix="Promote an existing READY version",
    )  # fmt: skip


def test_evaluation_against_a_deleted_champion_is_refused(
    platform: Platform, champion_deleted: tuple[str, list[str]]
) -> None:
    name, (kept, deleted) = champion_deleted
    now = datetime.now(UTC)
    params = EvaluateParams(
        model_name=name, version=kept, window_start=now - timedelta(days=2), window_end=now
    )
    assert_refused(
        platform, lambda: evaluate_model(params), RegistryError,
        names=[f"'{name}'", f"version {deleted}"], fix="Promote an existing READY version",
    )  # fmt: skip


def test_rollback_to_a_deleted_previous_champion_is_refused(
    platform: Platform, previous_deleted: tuple[str, list[str]]
) -> None:
    name, _ = previous_deleted
    assert_refused(
        platform, lambda: rollback_model(name), RegistryError,
        names=[f"'{name}'", "'previous-champion'"], fix="promote a specific version instead",
    )  # fmt: skip


def test_promoting_a_refused_version_is_refused(platform: Platform) -> None:
    name, refused = platform.model_name, platform.versions["refused"]
    assert_refused(
        platform, lambda: promote_model(name, refused), RegistryError,
        names=[f"'{name}'", f"version {refused}", "ROC AUC 0.51"], fix="pass force=True",
    )  # fmt: skip


def test_promoting_a_rolled_back_version_is_refused(
    platform: Platform, rolled_back: tuple[str, list[str]]
) -> None:
    name, (_, v2) = rolled_back
    assert_refused(
        platform, lambda: promote_model(name, v2), RegistryError,
        names=[f"'{name}'", f"version {v2}", "canary looked wrong"], fix="pass force=True",
    )  # fmt: skip


def test_promoting_a_missing_version_is_refused(platform: Platform) -> None:
    name = platform.model_name
    assert_refused(
        platform, lambda: promote_model(name, "99"), RegistryError,
        names=[f"'{name}'", "no version 99"], fix="Pass one of them",
    )  # fmt: skip
