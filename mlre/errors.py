"""The one exception family users see: messages name the input, the key, and what to do."""

from __future__ import annotations


class MlreError(Exception):
    """Base class for every error a user of the platform can hit and fix."""


class ConfigError(MlreError):
    """A setting, profile or feature-store configuration is missing or invalid."""


class SourceDataError(MlreError):
    """Source data failed validation before anything read it."""


class PlatformError(MlreError):
    """The local platform (Prefect / MLflow servers) could not be started, reached or stopped."""


class FeatureStoreError(MlreError):
    """A Feast operation was asked for something the feature repo does not define or cannot do."""


class ConsistencyError(MlreError):
    """Online and offline feature values disagree beyond the allowed mismatch rate."""


class InferenceError(MlreError):
    """Scoring or writing/reading the prediction log failed in a way the user can fix."""


class ServiceUnavailableError(MlreError):
    """A server the platform needs (MLflow, the Feast registry's database) did not answer.

    Unlike the other errors this one is transient: flows retry it, and re-running the same
    operation once the server answers again completes it.
    """
