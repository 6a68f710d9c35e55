"""Who may do what through the feature server, by Feast role.

Enforced only where the server runs with Feast auth on: the cloud's feature server
(`auth: {type: kubernetes}`, infra/feast_service.py), where a caller's roles are the Roles its
service account is bound to. Locally auth is off and nothing here is enforced. In-process stores
(the flows, the prediction service) never check permissions either: these guard the HTTP API.
"""

from __future__ import annotations

from feast import FeatureService, FeatureView, OnDemandFeatureView
from feast.permissions.action import AuthzedAction
from feast.permissions.permission import Permission
from feast.permissions.policy import RoleBasedPolicy

from mlre.k8s_labels import FEAST_READER_ROLE, FEAST_WRITER_ROLE

# What holds features: batch and stream views are FeatureView subclasses and match too.
FEATURE_TYPES = [FeatureView, OnDemandFeatureView, FeatureService]

# The flows may read and write both stores; `/materialize` and `/push` are writes to a view.
feature_writers = Permission(
    name="feature_writers",
    types=FEATURE_TYPES,
    actions=[
        AuthzedAction.DESCRIBE,
        AuthzedAction.READ_ONLINE,
        AuthzedAction.READ_OFFLINE,
        AuthzedAction.WRITE_ONLINE,
        AuthzedAction.WRITE_OFFLINE,
    ],
    policy=RoleBasedPolicy(roles=[FEAST_WRITER_ROLE]),
)

# The prediction service may look features up online and see the definitions, nothing else.
feature_readers = Permission(
    name="feature_readers",
    types=FEATURE_TYPES,
    actions=[AuthzedAction.DESCRIBE, AuthzedAction.READ_ONLINE],
    policy=RoleBasedPolicy(roles=[FEAST_READER_ROLE]),
)
