"""Models by MLflow alias, reloaded when an alias or the canary share moves, swapped atomically.

The holder publishes one immutable `ModelSet`; a request reads `holder.current` once and keeps
that object, so a swap in the middle of a request never mixes versions and the old model lives
until its last in-flight request is done. New versions are loaded completely before the swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from feast import FeatureService, FeatureStore

from mlre import registry
from mlre.canary import CANARY_SHARE_TAG, parse_share
from mlre.features.services import service_features, unusable_inputs
from mlre.inference import FEATURE_SERVICE_TAG, load_version, model_inputs
from serving.features import ServicePlan, plan_service
from serving.scorer import Scorer, probe_rows, verified_scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One model version in memory, with the feature service it was trained on."""

    name: str
    version: str
    model: Any
    feature_service: FeatureService
    inputs: tuple[str, ...]
    plan: ServicePlan
    scorer: Scorer  # the model on arrays, verified equal to it at load (serving.scorer)


@dataclass(frozen=True)
class RegistryState:
    """What the registry says should be served (versions as strings, None when unset)."""

    champion: str | None = None
    challenger: str | None = None
    previous: str | None = None
    share: float = 0.0


@dataclass(frozen=True)
class ModelSet:
    """What is being served right now; replaced as a whole, never mutated."""

    champion: LoadedModel | None = None
    canary: LoadedModel | None = None
    previous: LoadedModel | None = None
    canary_share: float = 0.0
    problems: tuple[str, ...] = field(default_factory=tuple)

    def slots(self) -> dict[str, str]:
        """slot -> version of every loaded model."""
        pairs = (("champion", self.champion), ("canary", self.canary), ("previous", self.previous))
        return {slot: m.version for slot, m in pairs if m is not None}


Loader = Callable[[str], LoadedModel]


def read_state(client: Any, model_name: str) -> RegistryState:
    """Aliases and canary share of the registered model; a missing model is an empty state."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return RegistryState()
        raise
    aliases = model.aliases
    return RegistryState(
        champion=aliases.get(registry.CHAMPION),
        challenger=aliases.get(registry.CHALLENGER),
        previous=aliases.get(registry.PREVIOUS_CHAMPION),
        share=parse_share(model.tags.get(CANARY_SHARE_TAG)),
    )


def feature_service_name(client: Any, model_name: str, version: str) -> str:
    """The version's `feature_service` tag, else its run's (the training flow sets both)."""
    mv = client.get_model_version(model_name, version)
    name = (mv.tags or {}).get(FEATURE_SERVICE_TAG)
    if not name and mv.run_id:
        name = client.get_run(mv.run_id).data.tags.get(FEATURE_SERVICE_TAG)
    if not name:
        raise registry.RegistryError(
            f"Model {model_name!r} version {version} has no {FEATURE_SERVICE_TAG!r} tag; tag it "
            "with the Feast feature service it was trained on."
        )
    return str(name)


def mlflow_loader(tracking_uri: str, model_name: str, store: FeatureStore) -> Loader:
    """Load a version from MLflow and resolve its feature service in the Feast registry."""
    from mlflow import MlflowClient

    def load(version: str) -> LoadedModel:
        began = time.perf_counter()
        client = MlflowClient(tracking_uri)
        service = store.get_feature_service(feature_service_name(client, model_name, version))
        model = load_version(tracking_uri, model_name, version)
        inputs = tuple(model_inputs(model, service))
        problem = unusable_inputs(service_features(store, service), used=set(inputs))
        if problem:
            raise registry.RegistryError(
                f"Model {model_name!r} version {version}, service {service.name!r}: {problem}"
            )
        scorer = verified_scorer(model, inputs, probe_rows(model, inputs))
        if not scorer.compiled:
            log.warning("Model %s v%s scores through its pipeline: %s", model_name, version,
                        scorer.reason)  # fmt: skip
        loaded = LoadedModel(
            model_name, version, model, service, inputs, plan_service(store, service), scorer
        )
        how = "compiled" if scorer.compiled else "pipeline"
        seconds = time.perf_counter() - began
        log.info("Loaded model %s v%s in %.2f s (%s)", model_name, version, seconds, how)
        return loaded

    return load


class ModelHolder:
    """Keeps the served ModelSet in step with the registry (call `refresh()`, or `start()`)."""

    def __init__(
        self,
        read: Callable[[], RegistryState],
        load: Loader,
        *,
        on_swap: Callable[[ModelSet], None] | None = None,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self._read = read
        self._load = load
        self._on_swap = on_swap
        self._on_error = on_error
        self._current = ModelSet()
        self.registry_read = False  # True once the registry has answered (readiness)
        self._cache: dict[str, LoadedModel] = {}
        self._failed: dict[str, str] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> ModelSet:
        """The set to serve this request with (read once per request)."""
        return self._current

    def _get(self, version: str | None, problems: list[str]) -> LoadedModel | None:
        """A loaded version (cached), or None with the reason appended to `problems`."""
        if version is None:
            return None
        if version in self._cache:
            return self._cache[version]
        try:
            loaded = self._load(version)
        except Exception as exc:  # any load failure must leave the service answering
            problems.append(f"version {version} failed to load: {exc}")
            if self._failed.get(version) != str(exc):
                log.exception("Model version %s failed to load", version)
                if self._on_error:
                    self._on_error("model_load", exc)
            self._failed[version] = str(exc)
            return None
        self._cache[version] = loaded
        self._failed.pop(version, None)
        return loaded

    def _target(self, state: RegistryState) -> ModelSet:
        """Load whatever the state names that is not in memory yet; nothing is published here."""
        problems: list[str] = []
        champion = self._get(state.champion, problems)
        canary = None
        if state.challenger is not None and state.share > 0 and state.challenger != state.champion:
            canary = self._get(state.challenger, problems)
        previous = self._get(state.previous, problems)
        if champion is None and state.champion is not None and previous is None:
            # The new champion cannot load: the one we served until now is the best fallback.
            previous = self._current.champion
        share = state.share if canary is not None else 0.0
        return ModelSet(champion, canary, previous, share, tuple(problems))

    def refresh(self) -> bool:
        """Re-read the registry; swap in a new set if anything changed. True when swapped."""
        with self._refresh_lock:
            try:
                state = self._read()
            except Exception as exc:  # registry unreachable: keep serving what we have
                log.warning("Could not read the model registry: %s", exc)
                if self._on_error:
                    self._on_error("registry", exc)
                return False
            self.registry_read = True
            target = self._target(state)
            now = self._current
            same = target.slots() == now.slots() and target.canary_share == now.canary_share
            if same and target.problems == now.problems:
                return False
            self._current = target  # one reference assignment: atomic for readers
            in_use = set(target.slots().values())
            self._cache = {v: m for v, m in self._cache.items() if v in in_use}
        if not same:
            log.info("Serving %s (canary share %.3f)", target.slots(), target.canary_share)
        if self._on_swap:
            self._on_swap(target)
        return True

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.refresh()

    def start(self, interval_s: float) -> None:
        """Poll the registry every `interval_s` seconds in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll, args=(interval_s,), name="model-poller", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for a load in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
