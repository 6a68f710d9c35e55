"""The bad-input corpus' shared harness: the platform under test, state snapshots, rejections.

Every case takes a `StateSnapshot` before and after feeding the platform one bad input and calls
`assert_unchanged`: a rejected input must leave the online store (values and watermarks), the model
registry (aliases, audit trail, versions and their tags), the prediction log and every lake file
exactly as they were. A difference raises `StateChanged`, which the summary counts as data lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from feast import FeatureStore
from mlflow import MlflowClient

from mlre import registry
from mlre.features.consistency import read_online
from mlre.features.store import open_store
from mlre.inference import FEATURE_SERVICE_TAG
from mlre.mlflow_uri import global_tracking_uri
from mlre.prediction_log import read_predictions
from mlre.registry import history
from mlre.settings import Settings

SERVICE = "fraud_model_v1"


@dataclass(frozen=True)
class Platform:
    """One materialized store, a real MLflow server and the models the cases act on."""

    settings: Settings
    tracking_uri: str
    # champion = v2, previous-champion = v1, v3 refused by the gate; has a prediction log
    model_name: str
    # one READY version, never promoted
    no_champion_model: str
    versions: dict[str, str]
    customer_ids: tuple[int, ...]
    views: tuple[str, ...]
    model_uri: str

    @property
    def lake_dir(self) -> Path:
        return self.settings.lake_dir

    def source_dir(self, name: str) -> Path:
        """A source folder of the lake (e.g. `customer_daily_stats`)."""
        return self.lake_dir / "sources" / name

    def store(self) -> FeatureStore:
        """A freshly opened store (no registry cache from an earlier case)."""
        return open_store(self.settings)

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)


@dataclass(frozen=True)
class ModelState:
    """What the registry holds for one model."""

    aliases: tuple[tuple[str, str], ...]
    audit: tuple[tuple[object, ...], ...]
    versions: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]


@dataclass(frozen=True)
class StateSnapshot:
    """Everything a rejected input must not change."""

    online: dict[str, pd.DataFrame]
    watermarks: dict[str, datetime | None]
    registry: dict[str, ModelState]
    predictions: dict[str, tuple[int, int]]
    lake: dict[str, str]
    extra: dict[str, object] = field(default_factory=dict)


class StateChanged(AssertionError):
    """A bad input changed stored state: the summary reports it as data lost."""


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def register_versions(tracking_uri: str, model_uri: str, name: str, count: int) -> list[str]:
    """`count` READY versions of the logged model under `name`, tagged with their service."""
    with global_tracking_uri(tracking_uri):
        versions = [str(mlflow.register_model(model_uri, name).version) for _ in range(count)]
    client = MlflowClient(tracking_uri)
    for version in versions:
        client.set_model_version_tag(name, version, FEATURE_SERVICE_TAG, SERVICE)
    return versions


def promote(client: MlflowClient, settings: Settings, name: str, version: str) -> None:
    registry.promote(
        client, name, version, reason="reliability setup", run_id="pytest", actor="pytest",
        lock=registry.file_lock(settings),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


def _online(platform: Platform) -> tuple[dict[str, pd.DataFrame], dict[str, datetime | None]]:
    store = platform.store()
    keys = pd.DataFrame({"customer_id": list(platform.customer_ids)})
    values, marks = {}, {}
    for name in platform.views:
        view = store.get_feature_view(name, allow_registry_cache=False)
        values[name] = read_online(store, view, keys)
        marks[name] = view.most_recent_end_time
    return values, marks


def _registry(platform: Platform) -> dict[str, ModelState]:
    """Every registered model's aliases, audit trail (`mlre.registry.history`) and versions."""
    client = platform.client()
    versions: dict[str, list[tuple[str, str, tuple[tuple[str, str], ...]]]] = {}
    for v in client.search_model_versions(max_results=10_000):
        tags = tuple(sorted((v.tags or {}).items()))
        versions.setdefault(v.name, []).append((str(v.version), str(v.status), tags))
    return {
        model.name: ModelState(
            aliases=tuple(sorted((k, str(v)) for k, v in model.aliases.items())),
            audit=tuple(
                (r.seq, r.action, r.from_version, r.to_version, r.reason)
                for r in history(client, model.name)
            ),
            versions=tuple(sorted(versions.get(model.name, []), key=lambda v: int(v[0]))),
        )
        for model in client.search_registered_models(max_results=1000)
    }


def _predictions(platform: Platform) -> dict[str, tuple[int, int]]:
    """(rows, bytes) of each model's prediction log."""
    root = platform.lake_dir / "predictions"
    if not root.is_dir():
        return {}
    logs = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        rows = len(read_predictions(platform.lake_dir, folder.name))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        logs[folder.name] = (rows, size)
    return logs


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, hidden and temp files included (a leftover counts)."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def capture(platform: Platform, **extra: object) -> StateSnapshot:
    """Snapshot the online store, the registry, the prediction logs and the lake files."""
    online, marks = _online(platform)
    return StateSnapshot(
        online=online,
        watermarks=marks,
        registry=_registry(platform),
        predictions=_predictions(platform),
        lake=file_hashes(platform.lake_dir),
        extra=dict(extra),
    )


# --------------------------------------------------------------------------------------------
# Compare
# --------------------------------------------------------------------------------------------


def _dict_changes(what: str, before: dict, after: dict) -> list[str]:
    changes = [f"{what} {k!r} appeared" for k in sorted(after.keys() - before.keys())]
    changes += [f"{what} {k!r} vanished" for k in sorted(before.keys() - after.keys())]
    changes += [
        f"{what} {k!r} changed: {before[k]!r} -> {after[k]!r}"
        for k in sorted(before.keys() & after.keys())
        if before[k] != after[k]
    ]
    return changes


def _online_changes(before: StateSnapshot, after: StateSnapshot) -> Iterable[str]:
    for view, frame in before.online.items():
        other = after.online.get(view)
        if other is None or not frame.equals(other):
            yield f"online values of {view!r} changed"


def diff(before: StateSnapshot, after: StateSnapshot) -> list[str]:
    """Human-readable differences between two snapshots (empty: nothing changed)."""
    return [
        *_online_changes(before, after),
        *_dict_changes("watermark of", before.watermarks, after.watermarks),
        *_dict_changes("registered model", before.registry, after.registry),
        *_dict_changes("prediction log (rows, bytes) of", before.predictions, after.predictions),
        *_dict_changes("lake file", before.lake, after.lake),
        *_dict_changes("state", before.extra, after.extra),
    ]


def assert_unchanged(before: StateSnapshot, after: StateSnapshot) -> None:
    """Raise StateChanged listing every difference between the snapshots."""
    changes = diff(before, after)
    if changes:
        raise StateChanged("A rejected input changed stored state:\n- " + "\n- ".join(changes))


def assert_same(what: str, expected: Mapping[str, object], found: Mapping[str, object]) -> None:
    """Raise StateChanged naming every `what` that appeared, vanished or changed (fault tests:
    stored state that a fault, or the recovery from it, must leave as expected)."""
    changes = _dict_changes(what, dict(expected), dict(found))
    if changes:
        raise StateChanged("Stored state is not as expected:\n- " + "\n- ".join(changes))


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def assert_message(error: BaseException | str, *, names: Iterable[str], fix: str) -> None:
    """The message names every input in `names` and says what to do (`fix` fragment)."""
    text = str(error)
    missing = [name for name in names if name not in text]
    assert not missing, f"message does not name {missing}: {text}"
    assert fix.lower() in text.lower(), f"message does not say what to do ({fix!r}): {text}"


def assert_refused(
    platform: Platform,
    action: Callable[[], object],
    error: type[BaseException],
    *,
    names: Iterable[str],
    fix: str,
) -> BaseException:
    """Run `action` between two snapshots: exactly `error`, a helpful message, no state change.

    The state is compared even when the action raised nothing or the wrong error, so an input
    that got through AND wrote something is reported as data lost, not just as not refused.
    """
    before = capture(platform)
    try:
        with pytest.raises(error) as excinfo:
            action()
    finally:
        assert_unchanged(before, capture(platform))
    assert excinfo.type is error, f"expected exactly {error.__name__}, got {excinfo.type.__name__}"
    assert_message(excinfo.value, names=names, fix=fix)
    return excinfo.value
