"""The project's scikit-learn models on disk: skops files, loaded against our own allow-list.

`mlflow.sklearn.load_model` (MLflow 3.17) refuses every format, skops included, unless
MLFLOW_ALLOW_PICKLE_DESERIALIZATION is true (its default when unset), and then hands skops the
trusted types written in the model's own MLmodel file: a crafted model can trust whatever it
needs. Here the types come from SKOPS_TRUSTED_TYPES, reviewed in this repository, and pickle is
never used, so no process needs that variable to load the platform's models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlre.errors import InferenceError

SKOPS_FORMAT = "skops"

# Types skops refuses by default that our pipelines contain: sklearn's own tree structures,
# numpy dtypes, and XGBoost's estimator and Booster (restored from XGBoost's own model bytes via
# Booster.__setstate__, not from a pickle). Anything else in a model is a surprise and must be
# looked at, not trusted.
# skops checks only the types: a crafted tree could still crash predict(), so the registry
# itself must stay writable by the platform only.
SKOPS_TRUSTED_TYPES = frozenset(
    {
        "numpy.dtype",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
        "xgboost.core.Booster",
        "xgboost.sklearn.XGBClassifier",
    }
)


def load_sklearn_model(model_dir: Path, label: str) -> Any:
    """The estimator of a downloaded MLflow sklearn model (`label` names it in errors)."""
    import skops.io
    from mlflow.models import Model
    from skops.io.exceptions import UntrustedTypesFoundException

    flavor = Model.load(str(model_dir)).flavors.get("sklearn")
    if flavor is None:
        raise InferenceError(
            f"{label} has no sklearn flavor; log it with mlflow.sklearn.log_model (the "
            "train-model flow does)."
        )
    serialization = flavor.get("serialization_format", "pickle")
    if serialization != SKOPS_FORMAT:
        raise InferenceError(
            f"{label} is saved as {serialization!r}; the platform loads only skops-saved models, "
            "never pickles. Re-log it with mlflow.sklearn.log_model's default format (the "
            "train-model flow does)."
        )
    try:
        path = Path(model_dir) / flavor["pickled_model"]
        return skops.io.load(path, trusted=sorted(SKOPS_TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise InferenceError(
            f"{label} holds types the platform does not trust ({exc}); review them and add them "
            "to mlre.model_files.SKOPS_TRUSTED_TYPES if they are safe to load."
        ) from exc
