"""What a feature service asks of its callers and gives its models, for any Feast repository.

Training, batch inference and the prediction service all need the same three answers about a
service: which join keys and request-time values an entity row must carry, which features it
returns with which Feast types, and whether each of those can be a model input at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from feast import FeatureService, FeatureStore

from mlre.errors import FeatureStoreError
from mlre.features.sources import kind_of

# Kinds a scikit-learn pipeline takes as a column: numbers and booleans (as floats), text as a
# category. Lists, maps, JSON, structs, bytes and timestamps need a transformation first.
MODEL_INPUT_KINDS = frozenset({"int", "float", "bool", "string"})


@dataclass(frozen=True)
class ServiceFeature:
    """One feature a service returns: its view, name, Feast type, and whether it is batch."""

    view: str
    name: str
    dtype: object
    from_batch_view: bool

    @property
    def kind(self) -> str:
        return kind_of(self.dtype)

    @property
    def model_input(self) -> bool:
        return self.kind in MODEL_INPUT_KINDS


def service_columns(store: FeatureStore, service: FeatureService) -> tuple[list[str], list[str]]:
    """(join keys, request-time columns) an entity row must carry for a service, in order."""
    batch = {v.name: v for v in store.list_feature_views()}
    on_demand = {v.name: v for v in store.list_on_demand_feature_views()}
    keys: list[str] = []
    request: list[str] = []

    def add_keys(view_name: str) -> None:
        keys.extend(k for k in batch[view_name].join_keys if k not in keys)

    ordered = [p.name for p in service.feature_view_projections]
    for name in ordered:
        if name in batch:
            add_keys(name)
    for name in (n for n in ordered if n in on_demand):
        odfv = on_demand[name]
        for source in odfv.source_feature_view_projections.values():
            if source.name in batch:
                add_keys(source.name)
        for source in odfv.source_request_sources.values():
            request.extend(f.name for f in source.schema if f.name not in request)
    return keys, request


def service_features(store: FeatureStore, service: FeatureService) -> list[ServiceFeature]:
    """Every feature the service returns, with its type, in the service's order."""
    batch = {v.name: v for v in store.list_feature_views(allow_cache=False)}
    views = {**batch, **{v.name: v for v in store.list_on_demand_feature_views(allow_cache=False)}}
    features: list[ServiceFeature] = []
    for projection in service.feature_view_projections:
        view = views.get(projection.name)
        if view is None:
            raise FeatureStoreError(
                f"Feature service {service.name!r} reads feature view {projection.name!r}, which "
                f"project {store.project!r} does not have (views: {sorted(views)}); apply the "
                "feature repo (mlre apply) or fix the service."
            )
        types = {f.name: f.dtype for f in view.features}
        for feature in projection.features:
            if feature.name not in types:
                raise FeatureStoreError(
                    f"Feature {projection.name}:{feature.name} of service {service.name!r} is not "
                    f"in the registered view (it has {sorted(types)}); apply the feature repo "
                    "(mlre apply)."
                )
            features.append(
                ServiceFeature(
                    projection.name, feature.name, types[feature.name], projection.name in batch
                )
            )
    return features


def unusable_inputs(features: list[ServiceFeature], used: set[str] | None = None) -> str | None:
    """A message naming every feature (of `used`, default all) no model can take, else None."""
    bad = [f for f in features if not f.model_input and (used is None or f.name in used)]
    if not bad:
        return None
    named = ", ".join(f"{f.view}:{f.name} ({f.dtype})" for f in bad)
    usable = [f"{f.view}:{f.name}" for f in features if f.model_input]
    return (
        f"{named} cannot be model input(s): a model takes numbers, booleans and text "
        "categories. Select the usable fields in the feature service (a projection such as "
        f"view[['a', 'b']]; usable here: {usable}), or add an on-demand view that turns the "
        "complex value into numbers."
    )


def as_model_frame(frame: pd.DataFrame, features: list[ServiceFeature]) -> pd.DataFrame:
    """Feature columns as a model sees them, in training and in batch scoring alike: numbers and
    booleans as float64 (1.0/0.0, missing as NaN: served values may be missing, and a boolean
    with gaps would otherwise become a three-way category); text stays text."""
    out = frame.copy()
    for feature in features:
        if feature.name not in out.columns:
            continue
        column = out[feature.name]
        if feature.kind == "bool":
            out[feature.name] = column.astype("boolean").astype("Float64").astype("float64")
        elif feature.kind in ("int", "float") or (
            pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        ):
            out[feature.name] = pd.to_numeric(column).astype("float64")
    return out
