"""Feast's feature-server app (the one `feast serve` runs) over a real store with the repo's
permissions applied: with auth on, the server refuses a reader's writes and a role-less caller's
reads; with the local profile (no `auth:` block) it enforces nothing.

Auth on is set up as `feast serve` does for `auth: {type: kubernetes}` (the real SecurityManager
over the registry's permissions, the real REST token extractor) except for one step: there is no
Kubernetes API here, so the bearer token maps to the User Feast's Kubernetes parser would build
(username `<namespace>:<service account>`, roles = its RoleBindings' role names). What the RBAC
objects yield is checked in tests/infra/test_feast_auth.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from feast import FeatureStore
from feast.feature_server import get_app
from feast.permissions.auth.auth_manager import AllowAll, AuthManager, set_auth_manager
from feast.permissions.auth.token_parser import TokenParser
from feast.permissions.security_manager import get_security_manager, no_security_manager
from feast.permissions.server.rest_token_extractor import RestTokenExtractor
from feast.permissions.server.utils import (
    AuthManagerType,
    ServerType,
    init_auth_manager,
    init_security_manager,
    str_to_auth_manager_type,
)
from feast.permissions.user import User
from starlette.authentication import AuthenticationError

from mlre.k8s_labels import FEAST_READER_ROLE, FEAST_WRITER_ROLE
from tests.integration.conftest import SMALL, FeatureEnv, build_feature_env

pytestmark = pytest.mark.integration

TOKENS = {
    "flows-token": User("mlre-flows:mlre-flows", roles=[FEAST_WRITER_ROLE]),
    "serving-token": User("mlre-platform:serving", roles=[FEAST_READER_ROLE]),
    "other-token": User("mlre-flows:default", roles=[]),
}
VIEW = "customer_hourly_stats_fv"
START, END = SMALL.start, SMALL.start + timedelta(days=SMALL.days)


class ServiceAccountTokens(TokenParser):
    """The User for a known bearer token; an unknown token is not authenticated."""

    async def user_details_from_access_token(self, access_token: str) -> User:
        if access_token not in TOKENS:
            raise AuthenticationError("unknown token")
        return TOKENS[access_token]


@contextmanager
def _feature_server(store: FeatureStore, auth: AuthManager | None) -> Iterator[TestClient]:
    """The feature-server app on `store`; auth as `feast serve` sets it from the store's config,
    or with `auth`'s token parser when given. The process-wide managers are reset after."""
    if auth is None:
        auth_type = str_to_auth_manager_type(store.config.auth_config.type)
        init_security_manager(auth_type=auth_type, fs=store)
        init_auth_manager(ServerType.REST, auth_type, store.config.auth_config)
    else:
        init_security_manager(auth_type=AuthManagerType.KUBERNETES, fs=store)
        set_auth_manager(auth)
    try:
        # Feast answers its errors (403 included) from a catch-all handler, which the test
        # client would re-raise instead of returning the response.
        app = get_app(store, registry_ttl_sec=0)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        no_security_manager()
        set_auth_manager(AllowAll())


def _write_body() -> dict:
    row_time = (END + timedelta(hours=1)).isoformat()
    return {
        "feature_view_name": VIEW,
        "df": {
            "customer_id": [1],
            "event_timestamp": [row_time],
            "created": [row_time],
            "txn_count_1h": [3],
            "txn_amount_sum_1h": [42.0],
            "failed_auth_count_1h": [0],
        },
    }


MATERIALIZE = {"start_ts": START.isoformat(), "end_ts": END.isoformat(), "feature_views": [VIEW]}
ONLINE_BY_SERVICE = {"feature_service": "fraud_model_v1",
                     "entities": {"customer_id": [1], "amount": [10.0]}}  # fmt: skip
ONLINE_BY_VIEW = {"features": [f"{VIEW}:txn_count_1h"], "entities": {"customer_id": [1]}}
# Each call the server guards: (path, body).
CALLS: dict[str, tuple[str, dict]] = {
    "read-service": ("/get-online-features", ONLINE_BY_SERVICE),
    "read-view": ("/get-online-features", ONLINE_BY_VIEW),
    "write": ("/write-to-online-store", _write_body()),
    "materialize": ("/materialize", MATERIALIZE),
}


def _statuses(client: TestClient, token: str | None) -> dict[str, int]:
    """The status of every guarded call, with `token` as bearer (None: no header)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return {
        name: client.post(path, json=body, headers=headers).status_code
        for name, (path, body) in CALLS.items()
    }


# Expected status per caller and call: 403 is Feast's FeastPermissionError.
EXPECTED = {
    "flows-token": {"read-service": 200, "read-view": 200, "write": 200, "materialize": 200},
    "serving-token": {"read-service": 200, "read-view": 200, "write": 403, "materialize": 403},
    "other-token": {"read-service": 403, "read-view": 403, "write": 403, "materialize": 403},
}


@pytest.fixture(scope="module")
def feature_env(tmp_path_factory: pytest.TempPathFactory) -> FeatureEnv:
    """A local store with generated sources and the repo (permissions included) applied."""
    return build_feature_env(tmp_path_factory, "local")


def test_the_registry_holds_the_repo_permissions(feature_env: FeatureEnv) -> None:
    names = sorted(p.name for p in feature_env.store.list_permissions())
    assert names == ["feature_readers", "feature_writers"]


def test_with_auth_on_each_caller_gets_exactly_its_role(feature_env: FeatureEnv) -> None:
    auth = AuthManager(token_parser=ServiceAccountTokens(), token_extractor=RestTokenExtractor())
    with _feature_server(feature_env.store, auth) as client:
        got = {token: _statuses(client, token) for token in TOKENS}
        no_token = _statuses(client, None)
        forged = _statuses(client, "forged")
    assert got == EXPECTED
    assert set(no_token.values()) == {401}
    assert set(forged.values()) == {401}


def test_local_profile_has_no_auth_and_enforces_nothing(feature_env: FeatureEnv) -> None:
    assert feature_env.store.config.auth_config.type == "no_auth"
    with _feature_server(feature_env.store, None) as client:
        assert get_security_manager() is None  # what `feast serve` leaves for no_auth
        statuses = _statuses(client, None)
    assert statuses == dict.fromkeys(CALLS, 200)
