"""Bad flow parameters: each flow is called as Prefect runs it (test harness), and must refuse.

Pydantic-typed parameters (the Prefect UI's run form) are refused by the parameter model itself;
the rest by the flow, with the project's error naming the parameter, before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pydantic
import pytest

from flows.consistency import ConsistencyParams, validate_feature_consistency
from flows.evaluation import EvaluateParams, evaluate_model
from flows.inference import BatchInferenceParams, batch_inference
from flows.materialize import MaterializeParams, materialize_features
from flows.promotion import promote_model, rollback_model
from flows.training import TrainParams, train_model
from mlre.data.lake import WindowError
from mlre.errors import ConfigError, FeatureStoreError, InferenceError, SourceDataError
from mlre.features.consistency import sample_keys
from mlre.features.materialize import view_spec
from mlre.registry import RegistryError
from mlre.training import TrainingError
from tests.reliability.harness import Platform, assert_refused

pytestmark = pytest.mark.integration
INPUT_PATH = "flow parameters"

NOW = datetime.now(UTC)
NAIVE = datetime(2026, 1, 1)
EARLIER = NOW - timedelta(days=2)
UNKNOWN_MODEL = "fraud-nobody-trained"
Action = Callable[[Platform], object]


def _evaluate(**update: object) -> Action:
    """evaluate-model on the platform's champion, a plausible window, with `update` applied."""

    def run(platform: Platform) -> object:
        fields: dict[str, object] = {
            "version": platform.versions["champion"],
            "window_start": EARLIER,
            "window_end": NOW,
        }
        return evaluate_model(EvaluateParams(**{**fields, **update}))

    return run


def _sample_keys(size: int) -> Action:
    def run(platform: Platform) -> object:
        store = platform.store()
        view = store.get_feature_view("customer_daily_stats_fv")
        return sample_keys(view_spec(store, view), NOW, size, seed=0)

    return run


# (action, error, names the message must contain, fix fragment), one pytest.param per case
CASES = [
    # materialize-features
    pytest.param(
        lambda p: materialize_features(MaterializeParams(mode="backfill", start=NOW, end=EARLIER)),
        WindowError, ["start=", "end="], "pass a start before the end",
        id="materialize_start_after_end",
    ),
    pytest.param(
        lambda p: materialize_features(MaterializeParams(mode="backfill", start=NAIVE, end=NOW)),
        WindowError, ["start=2026-01-01T00:00:00"], "pass an aware UTC time",
        id="materialize_naive_start",
    ),
    pytest.param(
        lambda p: materialize_features(MaterializeParams(mode="backfill", start=EARLIER)),
        WindowError, ["start", "end"], "pass them or use mode=incremental",
        id="materialize_backfill_without_end",
    ),
    pytest.param(
        lambda p: materialize_features(MaterializeParams(feature_views=["customer_weekly_fv"])),
        FeatureStoreError, ["'customer_weekly_fv'"], "Apply the feature repo",
        id="materialize_unknown_feature_view",
    ),
    pytest.param(
        lambda p: materialize_features(MaterializeParams(feature_service="fraud_model_v9")),
        FeatureStoreError, ["'fraud_model_v9'"], "Pass one of them",
        id="materialize_unknown_feature_service",
    ),
    pytest.param(
        lambda p: materialize_features(MaterializeParams(repo_path="/nonexistent/feature_repo")),
        ConfigError, ["/nonexistent/feature_repo"], "point MLRE_FEATURE_REPO",
        id="materialize_bad_repo_path",
    ),
    pytest.param(
        lambda p: MaterializeParams(partitions=0),
        pydantic.ValidationError, ["partitions"], "greater than or equal to 1",
        id="materialize_zero_partitions",
    ),
    pytest.param(
        lambda p: MaterializeParams(store_profile="staging"),
        pydantic.ValidationError, ["store_profile", "staging"], "'local' or 'production'",
        id="materialize_unknown_profile",
    ),
    # validate-feature-consistency
    pytest.param(
        lambda p: ConsistencyParams(sample_size=0),
        pydantic.ValidationError, ["sample_size"], "greater than or equal to 1",
        id="consistency_zero_sample_size",
    ),
    pytest.param(
        _sample_keys(-5), FeatureStoreError, ["sample_size=-5"], "pass sample_size >= 1",
        id="consistency_negative_sample_size_core",
    ),
    pytest.param(
        lambda p: validate_feature_consistency(ConsistencyParams(feature_views=["nope_fv"])),
        FeatureStoreError, ["'nope_fv'"], "Apply the feature repo",
        id="consistency_unknown_feature_view",
    ),
    pytest.param(
        lambda p: validate_feature_consistency(ConsistencyParams(feature_service="nope_v1")),
        FeatureStoreError, ["'nope_v1'"], "Pass one of them",
        id="consistency_unknown_feature_service",
    ),
    # train-model
    pytest.param(
        lambda p: train_model(TrainParams(feature_service="fraud_model_v9")),
        FeatureStoreError, ["'fraud_model_v9'"], "Pass one of them",
        id="train_unknown_feature_service",
    ),
    pytest.param(
        lambda p: train_model(TrainParams(start=NOW + timedelta(days=30))),
        TrainingError, ["window"], "widen the window",
        id="train_empty_window",
    ),
    pytest.param(
        lambda p: train_model(TrainParams(start=NOW, end=EARLIER)),
        WindowError, ["start=", "end="], "pass a start before the end",
        id="train_start_after_end",
    ),
    pytest.param(
        lambda p: train_model(TrainParams(start=NAIVE)),
        WindowError, ["start=2026-01-01T00:00:00"], "pass an aware UTC time",
        id="train_naive_start",
    ),
    pytest.param(
        lambda p: train_model(TrainParams(label_source="sources/no_such_labels")),
        SourceDataError, ["sources/no_such_labels"], "land the source data first",
        id="train_unknown_label_source",
    ),
    pytest.param(
        lambda p: TrainParams(model_family="catboost"),
        pydantic.ValidationError, ["model_family", "catboost"], "'xgboost'",
        id="train_unknown_model_family",
    ),
    pytest.param(
        lambda p: TrainParams(device="tpu"),
        pydantic.ValidationError, ["device", "tpu"], "'cuda'",
        id="train_unknown_device",
    ),
    pytest.param(
        lambda p: TrainParams(model_family="random_forest", device="cuda"),
        pydantic.ValidationError, ["'random_forest'", "device='cuda'"], "use one of ['xgboost']",
        id="train_cpu_family_on_cuda",
    ),
    # evaluate-model
    pytest.param(
        _evaluate(window_start=NAIVE), WindowError, ["window_start=2026-01-01T00:00:00"],
        "pass an aware UTC time", id="evaluate_naive_window",
    ),
    pytest.param(
        _evaluate(window_start=NOW, window_end=EARLIER), WindowError,
        ["window_start=", "window_end="], "pass a window_start before the window_end",
        id="evaluate_start_after_end",
    ),
    pytest.param(
        _evaluate(version="99"), RegistryError, ["'fraud-reliability'", "99"],
        "Pass one of them", id="evaluate_unknown_version",
    ),
    pytest.param(
        _evaluate(model_name=UNKNOWN_MODEL), RegistryError, [f"'{UNKNOWN_MODEL}'"],
        "train and register it first", id="evaluate_unknown_model",
    ),
    # batch-inference
    pytest.param(
        lambda p: batch_inference(BatchInferenceParams(start=NOW, end=EARLIER)),
        WindowError, ["start=", "end="], "pass a start before the end",
        id="inference_start_after_end",
    ),
    pytest.param(
        lambda p: batch_inference(BatchInferenceParams(start=NAIVE, end=NOW)),
        WindowError, ["start=2026-01-01T00:00:00"], "pass an aware UTC time",
        id="inference_naive_start",
    ),
    pytest.param(
        lambda p: batch_inference(BatchInferenceParams(request_source="sources/nothing_here")),
        SourceDataError, ["sources/nothing_here"], "land the source data first",
        id="inference_unknown_request_source",
    ),
    pytest.param(
        lambda p: batch_inference(BatchInferenceParams(model_name=UNKNOWN_MODEL)),
        InferenceError, [f"'{UNKNOWN_MODEL}'"], "run the ml-pipeline flow",
        id="inference_unknown_model",
    ),
    # promote-model / rollback-model
    pytest.param(
        lambda p: promote_model(UNKNOWN_MODEL), RegistryError, [f"'{UNKNOWN_MODEL}'"],
        "train and register it first", id="promote_unknown_model",
    ),
    pytest.param(
        lambda p: rollback_model(UNKNOWN_MODEL), RegistryError, [f"'{UNKNOWN_MODEL}'"],
        "train and register it first", id="rollback_unknown_model",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("action", "error", "names", "fix"), CASES)
def test_bad_parameter_is_refused(
    platform: Platform,
    action: Action,
    error: type[BaseException],
    names: list[str],
    fix: str,
) -> None:
    assert_refused(platform, lambda: action(platform), error, names=names, fix=fix)
