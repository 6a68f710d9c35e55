"""Open a Feast store for a profile and apply the feature repo, with clear errors for bad config.

Nothing here writes `os.environ`: a profile's `${MLRE_*}` values are rendered from the settings
object (`profile_values`), and the definitions learn the lake root from `repo_lake_uri()`.
"""

from __future__ import annotations

import os
import re
import runpy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
import yaml
from feast import (
    BatchFeatureView,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    OnDemandFeatureView,
    Project,
    PushSource,
    RepoConfig,
)
from feast.data_source import DataSource, KafkaSource, KinesisSource
from feast.feature_view import DUMMY_ENTITY
from feast.labeling.label_view import LabelView
from feast.permissions.permission import Permission
from feast.repo_contents import RepoContents
from feast.repo_operations import apply_total_with_repo_instance, get_repo_files
from feast.stream_feature_view import StreamFeatureView

from mlre.errors import ConfigError, FeatureStoreError, ServiceUnavailableError
from mlre.settings import Settings, get_settings

PROFILE_FILES = {"local": "feature_store.yaml", "production": "feature_store.production.yaml"}
KNOWN_ONLINE_STORES = {"sqlite", "redis"}
_VARIABLE = re.compile(r"\$\{(\w+)\}")
# The lake root of the definitions being loaded: set by load_repo_contents for its files only.
_LOADING_LAKE_URI: ContextVar[str | None] = ContextVar("mlre_loading_lake_uri", default=None)


def repo_lake_uri() -> str:
    """The lake root feature_repo/definitions.py roots its source paths at: the settings that
    `load_repo_contents` was given, or, when Feast's own CLI imports the file, the process's."""
    return _LOADING_LAKE_URI.get() or get_settings().lake_uri


@contextmanager
def _loading_with(lake_uri: str) -> Iterator[None]:
    """Make `repo_lake_uri()` answer `lake_uri` in this thread while definitions execute."""
    token = _LOADING_LAKE_URI.set(lake_uri)
    try:
        yield
    finally:
        _LOADING_LAKE_URI.reset(token)


def profile_values(settings: Settings) -> dict[str, str]:
    """The values a profile file may reference as `${NAME}`, taken from the settings object."""
    values = {
        "MLRE_HOME": str(settings.home),
        "MLRE_LAKE_URI": settings.lake_uri,
        "MLRE_REGISTRY_URI": settings.registry_uri,
        "MLRE_REDIS_CONNECTION_STRING": settings.redis_connection_string,
    }
    return {key: value for key, value in values.items() if value}


def profile_path(repo_path: Path, profile: str) -> Path:
    """The feature_store YAML file of a profile, or a ConfigError naming the valid profiles."""
    if profile not in PROFILE_FILES:
        raise ConfigError(
            f"Unknown store profile {profile!r}; use one of {sorted(PROFILE_FILES)} "
            "(MLRE_STORE_PROFILE or the flow's store_profile parameter)."
        )
    path = Path(repo_path) / PROFILE_FILES[profile]
    if not path.is_file():
        raise ConfigError(
            f"Feature repo {repo_path} has no {PROFILE_FILES[profile]} for profile {profile!r}; "
            "point MLRE_FEATURE_REPO (or the repo_path parameter) at a Feast repository."
        )
    return path


def render_profile(text: str, values: Mapping[str, str], *, source: str) -> dict[str, Any]:
    """Substitute `${NAME}` from `values` (then the environment); a missing one is a ConfigError."""
    lookup = {**os.environ, **values}
    missing = sorted({name for name in _VARIABLE.findall(text) if not lookup.get(name)})
    if missing:
        raise ConfigError(
            f"{source} needs environment variable(s) {', '.join(missing)} which are not set; "
            "export them (see feature_repo/README.md) or use the 'local' profile."
        )
    rendered = _VARIABLE.sub(lambda match: lookup[match.group(1)], text)
    config = _load_mapping(rendered, source=source)
    online = config.get("online_store") or {}
    if not isinstance(online, dict):
        raise ConfigError(
            f"{source}: online_store must be a mapping with a 'type' key, not {online!r}; "
            f"use one of {sorted(KNOWN_ONLINE_STORES)} as its type."
        )
    online_type = online.get("type", "sqlite")
    if online_type not in KNOWN_ONLINE_STORES:
        raise ConfigError(
            f"{source}: online_store.type {online_type!r} is not supported here; "
            f"use one of {sorted(KNOWN_ONLINE_STORES)}."
        )
    return config


def _load_mapping(text: str, *, source: str) -> dict[str, Any]:
    """Parse a profile; broken YAML or a non-mapping is a ConfigError naming the file."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{source} is not valid YAML ({exc}); fix the file (compare feature_repo/"
            "feature_store.yaml)."
        ) from exc
    if not isinstance(config, dict):
        raise ConfigError(
            f"{source} must hold a YAML mapping (project, registry, online_store, ...), not "
            f"{type(config).__name__}; fix the file (compare feature_repo/feature_store.yaml)."
        )
    return config


def open_store(
    settings: Settings, repo_path: Path | None = None, profile: str | None = None
) -> FeatureStore:
    """A FeatureStore for the repo and profile (defaults from settings)."""
    repo_path = Path(repo_path or settings.feature_repo).resolve()
    profile = profile or settings.store_profile
    path = profile_path(repo_path, profile)
    config = render_profile(path.read_text(), profile_values(settings), source=str(path))
    if profile == "local":
        (settings.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        # repo_path twice: the config's resolves the online store's relative path, the store's
        # the registry's (Feast would take the working directory for it otherwise).
        store = FeatureStore(
            repo_path=str(repo_path), config=RepoConfig(repo_path=repo_path, **config)
        )
        # Feast resolves the provider lazily: an unknown one would fail only at the first apply
        # or write, as a Feast error inside a retried task. Resolve it while the file is known.
        store._get_provider()
    except Exception as exc:  # pydantic/feast config validation: re-raise with the file named
        raise ConfigError(
            f"{path}: invalid Feast configuration: {exc}. Fix the file (compare "
            "feature_repo/feature_store.yaml)."
        ) from exc
    return store


def load_repo_contents(repo_path: Path, settings: Settings) -> RepoContents:
    """Execute every definition file afresh (no module cache) and collect its Feast objects."""
    objects: list[Any] = []
    with _loading_with(settings.lake_uri):
        for file in get_repo_files(Path(repo_path).resolve()):
            namespace = runpy.run_path(str(file), run_name=f"feast_repo_{file.stem}")
            # Feast walks dir(module): names in sorted order, imported objects included.
            objects.extend(namespace[name] for name in sorted(namespace))
    return collect_objects(objects)


def _add(bucket: list[Any], obj: Any) -> None:
    """Append unless this very object is there (equal twins are kept, as Feast keeps them)."""
    if obj is not None and not any(obj is known for known in bucket):
        bucket.append(obj)


def collect_objects(objects: list[Any]) -> RepoContents:
    """Group definition objects exactly as `feast apply` does (feast.repo_operations.parse_repo,
    Feast 0.67): sources found inside push/stream sources, feature views and label views are
    registered too, stream and batch views are told apart, and the dummy entity that entity-less
    views (and services with on-demand views) resolve through is always added."""
    res = RepoContents(
        projects=[],
        data_sources=[],
        entities=[],
        feature_views=[],
        feature_services=[],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        permissions=[],
    )
    for obj in objects:
        if isinstance(obj, DataSource):
            _add(res.data_sources, obj)
            if isinstance(obj, PushSource | KafkaSource | KinesisSource):
                _add(res.data_sources, obj.batch_source)
        if isinstance(obj, StreamFeatureView):
            _add(res.stream_feature_views, obj)
            _add(res.data_sources, obj.batch_source)
            _add(res.data_sources, obj.stream_source)
        elif isinstance(obj, FeatureView):  # batch feature views included
            _add(res.feature_views, obj)
            _add(res.data_sources, obj.batch_source)
            if not isinstance(obj, BatchFeatureView):
                _add(res.data_sources, obj.stream_source)
        elif isinstance(obj, LabelView):
            _add(res.label_views, obj)
            _add(res.data_sources, obj.source)
            if isinstance(obj.source, PushSource):
                _add(res.data_sources, obj.source.batch_source)
        else:
            for kind, bucket in (
                (Entity, res.entities),
                (FeatureService, res.feature_services),
                (OnDemandFeatureView, res.on_demand_feature_views),
                (Permission, res.permissions),
                (Project, res.projects),
            ):
                if isinstance(obj, kind):
                    _add(bucket, obj)
    res.entities.append(DUMMY_ENTITY)
    return res


@dataclass(frozen=True)
class ApplySummary:
    """What a registry sync left in the registry."""

    project: str
    entities: list[str]
    feature_views: list[str]
    on_demand_feature_views: list[str]
    feature_services: list[str]


def apply_repo(store: FeatureStore, repo_path: Path, settings: Settings) -> ApplySummary:
    """Sync the registry with the repo: create/update its objects, delete ones no longer defined."""
    contents = load_repo_contents(repo_path, settings)
    if not contents.feature_views:
        raise FeatureStoreError(
            f"Feature repo {repo_path} defines no feature views; check its .feastignore and files."
        )
    project = store.project
    if not contents.projects:
        contents.projects.append(Project(name=project, description=""))
    try:
        apply_total_with_repo_instance(
            store, project, store.registry, contents, skip_source_validation=True
        )
        store.refresh_registry()
    except sqlalchemy.exc.OperationalError as exc:  # the SQL registry's database did not answer
        raise ServiceUnavailableError(
            f"The Feast registry {registry_location(store)} did not answer while applying feature "
            f"repo {repo_path} ({exc.orig or exc}). Check that its database runs and that "
            "MLRE_REGISTRY_URI points at it, then re-run the apply (mlre apply): objects "
            "are written one at a time, so a re-run converges."
        ) from exc
    return ApplySummary(
        project=project,
        entities=sorted(e.name for e in store.list_entities()),
        feature_views=sorted(fv.name for fv in store.list_feature_views()),
        on_demand_feature_views=sorted(v.name for v in store.list_on_demand_feature_views()),
        feature_services=sorted(s.name for s in store.list_feature_services()),
    )


def registry_location(store: FeatureStore) -> str:
    """Where the store's registry lives, passwords masked (for error messages)."""
    path = str(store.config.registry.path)
    if "://" not in path:
        return path
    return sqlalchemy.engine.make_url(path).render_as_string(hide_password=True)


def get_feature_view(store: FeatureStore, name: str) -> FeatureView:
    """A registered feature view, or a FeatureStoreError listing the ones that exist."""
    views = {fv.name: fv for fv in store.list_feature_views(allow_cache=False)}
    if name not in views:
        raise FeatureStoreError(
            f"Feature view {name!r} is not in project {store.project!r}; "
            f"known views: {sorted(views)}. Apply the feature repo first (mlre apply)."
        )
    return views[name]


def get_feature_service(store: FeatureStore, name: str) -> FeatureService:
    """A registered feature service, or a FeatureStoreError listing the ones that exist."""
    services = {s.name: s for s in store.list_feature_services()}
    if name not in services:
        raise FeatureStoreError(
            f"Feature service {name!r} is not in project {store.project!r}; "
            f"known services: {sorted(services)}. Pass one of them (feature_service parameter) "
            "or apply the feature repo that defines it."
        )
    return services[name]


def select_views(
    store: FeatureStore, names: list[str] | None = None, feature_service: str | None = None
) -> list[FeatureView]:
    """Feature views by name, or those a feature service reads, or every batch view."""
    if names:
        return [get_feature_view(store, name) for name in names]
    if feature_service:
        service = get_feature_service(store, feature_service)
        batch_names = {fv.name for fv in store.list_feature_views(allow_cache=False)}
        wanted = [p.name for p in service.feature_view_projections if p.name in batch_names]
        return [get_feature_view(store, name) for name in wanted]
    views = sorted(store.list_feature_views(allow_cache=False), key=lambda fv: fv.name)
    if not views:
        raise FeatureStoreError(
            f"Project {store.project!r} has no feature views; apply the feature repo first."
        )
    return views
