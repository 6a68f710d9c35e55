"""Our registry sync (`apply_repo`, behind `mlre apply` and the materialize flow) registers exactly
what Feast's own `feast apply` registers, object by object, for the demo repo and for a repo
shaped unlike it (push source with an inline batch source, composite keys, python-mode
on-demand view, every Feast type)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from feast import FeatureStore
from google.protobuf.json_format import MessageToDict

from mlre.features.store import apply_repo, open_store
from mlre.settings import PROJECT_ROOT, Settings
from tests.support.marketplace import copy_repo

pytestmark = pytest.mark.integration
FEAST = str(Path(sys.executable).with_name("feast"))
# Feast's serialised UDF (dill) names the module it was loaded from, which differs between
# Feast's importlib and our fresh runpy load; the function's source text is compared instead.
VOLATILE = {"meta", "body"}


def _plain(spec: Any) -> Any:
    """A proto spec as a dict, without timestamps and pickled function bodies."""
    if isinstance(spec, dict):
        return {k: _plain(v) for k, v in spec.items() if k not in VOLATILE}
    if isinstance(spec, list):
        return [_plain(v) for v in spec]
    return spec


def _proto_spec(obj: Any) -> dict[str, Any]:
    proto = obj.to_proto()
    spec = proto.spec if hasattr(proto, "spec") else proto
    return _plain(MessageToDict(spec))


def registry_objects(store: FeatureStore) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> spec of everything in the store's project registry."""
    registry, project = store.registry, store.project
    listings = {
        "project": [registry.get_project(project, allow_cache=False)],
        "entity": registry.list_entities(project, allow_cache=False),
        "data_source": registry.list_data_sources(project, allow_cache=False),
        "feature_view": registry.list_feature_views(project, allow_cache=False),
        "on_demand_feature_view": registry.list_on_demand_feature_views(project, allow_cache=False),
        "stream_feature_view": registry.list_stream_feature_views(project, allow_cache=False),
        "feature_service": registry.list_feature_services(project, allow_cache=False),
        "permission": registry.list_permissions(project, allow_cache=False),
    }
    return {(kind, obj.name): _proto_spec(obj) for kind, objs in listings.items() for obj in objs}


def _feast_apply(repo: Path, env: dict[str, str]) -> None:
    """Feast's own CLI, as a user runs it in the repo folder."""
    done = subprocess.run(
        [FEAST, "-c", str(repo), "apply"],
        cwd=repo,
        env={**os.environ, **env, "FEAST_USAGE": "False"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _assert_same(ours: FeatureStore, theirs: FeatureStore) -> None:
    mine, feast = registry_objects(ours), registry_objects(theirs)
    assert sorted(mine) == sorted(feast)
    for key in feast:
        assert mine[key] == feast[key], f"{key} differs"


def test_demo_repo_sync_equals_feast_apply(tmp_path: Path) -> None:
    lake = tmp_path / "lake"  # one lake for both, so the source paths are the same
    theirs_home, ours_home = tmp_path / "theirs", tmp_path / "ours"
    repo = tmp_path / "repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo)
    (theirs_home / "feast").mkdir(parents=True)  # Feast makes the registry file, not its folder
    _feast_apply(repo, {"MLRE_HOME": str(theirs_home), "MLRE_OFFLINE_URI": str(lake)})
    theirs = open_store(Settings(home=theirs_home, offline_uri=str(lake)), repo)
    settings = Settings(home=ours_home, offline_uri=str(lake))
    ours = open_store(settings, repo)
    apply_repo(ours, repo, settings)
    _assert_same(ours, theirs)
    # The views, services and the on-demand view are all there, not an empty match.
    kinds = {kind for kind, _ in registry_objects(ours)}
    assert {"feature_view", "on_demand_feature_view", "feature_service", "entity"} <= kinds
    # The feature server's permissions (feature_repo/permissions.py) are synced like the rest.
    assert {name for kind, name in registry_objects(ours) if kind == "permission"} == {
        "feature_readers",
        "feature_writers",
    }


def test_marketplace_repo_sync_equals_feast_apply(tmp_path: Path) -> None:
    theirs_repo = copy_repo(tmp_path / "theirs")
    ours_repo = copy_repo(tmp_path / "ours")
    _feast_apply(theirs_repo, {})
    settings = Settings(home=tmp_path / "home")
    theirs = FeatureStore(repo_path=str(theirs_repo))
    ours = open_store(settings, ours_repo)
    summary = apply_repo(ours, ours_repo, settings)
    _assert_same(ours, theirs)
    # The push source's inline batch source and the view behind it were registered.
    objects = registry_objects(ours)
    assert ("feature_view", "seller_region_stats_fv") in objects
    assert ("data_source", "seller_region_push") in objects
    assert len(summary.feature_services) >= 3
