"""Bad feature-repo configuration through `open_store` / `render_profile` / `apply_repo`.

Every broken repo renders `${MLRE_HOME}` to the platform's own home, so a config that got half
way would hit the platform's real registry and online store; the snapshot shows it did not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlre.errors import ConfigError, FeatureStoreError
from mlre.features.store import apply_repo, open_store, render_profile
from mlre.settings import PROJECT_ROOT, Settings
from tests.reliability.harness import Platform, assert_refused

pytestmark = pytest.mark.integration
INPUT_PATH = "feature repo config"
LOCAL_PROFILE = (PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text()


def _repo(tmp_path: Path, profile_text: str, definitions: str | None = None) -> Path:
    """A feature repo folder with the given local profile (and the project's definitions)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(profile_text)
    if definitions is None:
        shutil.copy(PROJECT_ROOT / "feature_repo" / "definitions.py", repo / "definitions.py")
    else:
        (repo / "definitions.py").write_text(definitions)
    return repo


BROKEN_PROFILES = [
    pytest.param(
        LOCAL_PROFILE.replace("type: sqlite", "type: cassandra"),
        ["cassandra", "online_store.type"],
        "use one of",
        id="unknown_online_store_type",
    ),
    pytest.param(
        LOCAL_PROFILE.replace("online_store:\n  type: sqlite", "online_store: sqlite\nx:"),
        ["online_store", "'sqlite'"],
        "use one of",
        id="online_store_not_a_mapping",
    ),
    pytest.param(LOCAL_PROFILE + "registry: [unclosed\n", [], "fix the file", id="malformed_yaml"),
    pytest.param("- just\n- a list\n", ["list"], "fix the file", id="not_a_mapping"),
    pytest.param(
        LOCAL_PROFILE.replace("provider: local", "provider: nowhere"),
        ["nowhere"],
        "fix the file",
        id="invalid_feast_option",
    ),
]


@pytest.mark.parametrize(("profile_text", "names", "fix"), BROKEN_PROFILES)
def test_broken_profile_is_refused(
    platform: Platform, tmp_path: Path, profile_text: str, names: list[str], fix: str
) -> None:
    repo = _repo(tmp_path, profile_text)
    assert_refused(
        platform, lambda: open_store(platform.settings, repo), ConfigError,
        names=[str(repo / "feature_store.yaml"), *names], fix=fix,
    )  # fmt: skip


def test_unknown_store_type_is_refused_by_render_profile(platform: Platform) -> None:
    text = LOCAL_PROFILE.replace("type: sqlite", "type: dynamodb")
    values = {"MLRE_HOME": str(platform.settings.home)}
    assert_refused(
        platform, lambda: render_profile(text, values, source="profile.yaml"), ConfigError,
        names=["profile.yaml", "dynamodb"], fix="use one of",
    )  # fmt: skip


def test_bad_repo_path_is_refused(platform: Platform, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo"
    assert_refused(
        platform, lambda: open_store(platform.settings, missing), ConfigError,
        names=[str(missing)], fix="point MLRE_FEATURE_REPO",
    )  # fmt: skip


def test_unknown_profile_is_refused(platform: Platform) -> None:
    assert_refused(
        platform, lambda: open_store(platform.settings, profile="staging"), ConfigError,
        names=["'staging'", "MLRE_STORE_PROFILE"], fix="use one of",
    )  # fmt: skip


def test_production_profile_without_its_variables_is_refused(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLRE_REDIS_CONNECTION_STRING", "MLRE_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(home=platform.settings.home, store_profile="production")
    names = ["feature_store.production.yaml", "MLRE_REDIS_CONNECTION_STRING", "MLRE_REGISTRY_URI"]
    assert_refused(
        platform, lambda: open_store(settings), ConfigError, names=names, fix="export them"
    )


def test_repo_without_feature_views_is_refused(platform: Platform, tmp_path: Path) -> None:
    repo = _repo(tmp_path, LOCAL_PROFILE, definitions='"""Nothing defined yet."""\n')
    store = open_store(platform.settings, repo)
    assert_refused(
        platform, lambda: apply_repo(store, repo, platform.settings), FeatureStoreError,
        names=[str(repo)], fix="check its .feastignore",
    )  # fmt: skip
