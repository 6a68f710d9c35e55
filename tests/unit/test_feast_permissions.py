"""The feature repo's Feast permissions under Feast's own enforcement code (`enforce_policy`, what
the feature server's SecurityManager calls) with real users: the objects are the repo's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from feast.errors import FeastPermissionError
from feast.permissions.action import AuthzedAction
from feast.permissions.enforcer import enforce_policy
from feast.permissions.user import User
from feast.repo_contents import RepoContents

from mlre.features.store import load_repo_contents
from mlre.k8s_labels import FEAST_READER_ROLE, FEAST_WRITER_ROLE
from mlre.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.unit

A = AuthzedAction
# Users as Feast's Kubernetes auth builds them: "<namespace>:<service account>" and role names.
WRITER = User("mlre-flows:mlre-flows", roles=[FEAST_WRITER_ROLE])
READER = User("mlre-platform:serving", roles=[FEAST_READER_ROLE])
NOBODY = User("mlre-flows:default", roles=[])
WRITES = [[A.WRITE_ONLINE], [A.WRITE_OFFLINE], [A.WRITE_OFFLINE, A.WRITE_ONLINE]]
REGISTRY_EDITS = [[A.CREATE], [A.UPDATE], [A.DELETE]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> RepoContents:
    home = tmp_path_factory.mktemp("home")
    return load_repo_contents(PROJECT_ROOT / "feature_repo", Settings(home=Path(home)))


def _resources(repo: RepoContents) -> list:
    """Everything a request can name: batch views, the on-demand view, the services."""
    return [*repo.feature_views, *repo.on_demand_feature_views, *repo.feature_services]


def _allowed(repo: RepoContents, user: User, actions: list[AuthzedAction]) -> list[str]:
    """Names of the resources `user` may act on; a refusal of any one raises."""
    done = enforce_policy(repo.permissions, user, _resources(repo), actions)
    return [r.name for r in done]


def test_repo_defines_both_permissions_and_every_kind_of_resource(repo: RepoContents) -> None:
    assert sorted(p.name for p in repo.permissions) == ["feature_readers", "feature_writers"]
    assert repo.feature_views
    assert repo.on_demand_feature_views
    assert repo.feature_services


@pytest.mark.parametrize("actions", [[A.READ_ONLINE], [A.DESCRIBE]])
@pytest.mark.parametrize("user", [READER, WRITER], ids=["reader", "writer"])
def test_readers_and_writers_may_read_online(
    repo: RepoContents, user: User, actions: list[AuthzedAction]
) -> None:
    assert _allowed(repo, user, actions) == [r.name for r in _resources(repo)]


@pytest.mark.parametrize("actions", [*WRITES, [A.READ_OFFLINE]])
def test_writers_may_write_materialize_and_read_offline(
    repo: RepoContents, actions: list[AuthzedAction]
) -> None:
    assert _allowed(repo, WRITER, actions) == [r.name for r in _resources(repo)]


@pytest.mark.parametrize("actions", [*WRITES, [A.READ_OFFLINE]])
def test_readers_are_refused_writes_materialize_and_offline_reads(
    repo: RepoContents, actions: list[AuthzedAction]
) -> None:
    # /materialize and /write-to-online-store check WRITE_ONLINE on each view; /push the WRITEs.
    for view in repo.feature_views:
        with pytest.raises(FeastPermissionError, match=FEAST_WRITER_ROLE):
            enforce_policy(repo.permissions, READER, [view], actions)


@pytest.mark.parametrize("actions", [[A.READ_ONLINE], [A.DESCRIBE], *WRITES, [A.READ_OFFLINE]])
def test_a_caller_without_a_role_is_refused_everything(
    repo: RepoContents, actions: list[AuthzedAction]
) -> None:
    for resource in _resources(repo):
        with pytest.raises(FeastPermissionError):
            enforce_policy(repo.permissions, NOBODY, [resource], actions)


@pytest.mark.parametrize("actions", REGISTRY_EDITS)
@pytest.mark.parametrize("user", [READER, WRITER], ids=["reader", "writer"])
def test_nobody_edits_the_registry_through_the_server(
    repo: RepoContents, user: User, actions: list[AuthzedAction]
) -> None:
    with pytest.raises(FeastPermissionError, match="No permissions defined"):
        enforce_policy(repo.permissions, user, repo.feature_views[:1], actions)
