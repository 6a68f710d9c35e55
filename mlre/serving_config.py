"""Serving settings (`MLRE_SERVING_*`), separate from the platform settings they extend."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuleConfig(BaseModel):
    """The last-resort scorer: logistic of the amount relative to the customer's 30-day mean."""

    intercept: float = Field(-4.0, description="Log-odds at ratio 0.")
    ratio_coef: float = Field(1.0, description="Log-odds added per unit of amount/avg ratio.")
    default_avg_amount: float = Field(
        50.0, gt=0, description="Mean amount assumed when the feature store cannot say."
    )


class ServingConfig(BaseSettings):
    """How the prediction service runs; override with `MLRE_SERVING_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="MLRE_SERVING_", extra="ignore")

    port: int = Field(8000, description="Port on settings.host (127.0.0.1 by default).")
    workers: int = Field(
        1,
        ge=1,
        description=(
            "Worker processes of `python -m serving` sharing the port (uvicorn's multi-process "
            "mode). Each has its own model holder and alias poller, Feast client, circuit "
            "breaker, micro-batcher and prediction-log writer (log files are named by pid); "
            "/metrics sums their counters. Size it to the pod's CPU request (whole cores)."
        ),
    )
    model_name: str | None = Field(None, description="Registered model (default MLRE_MODEL_NAME).")
    poll_interval_s: float = Field(5.0, gt=0, description="How often aliases are re-read.")
    max_instances: int = Field(256, ge=1, description="Instances per /predict call (else 413).")
    max_batch_instances: int = Field(
        256, ge=1, description="Instances of queued requests scored together (micro-batch)."
    )
    feature_timeout_s: float = Field(0.25, gt=0, description="Feast online read budget.")
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failed reads that open the feature-store breaker."
    )
    breaker_open_s: float = Field(
        2.0, gt=0, description="How long an open breaker refuses reads before one probe."
    )
    feature_threads: int = Field(16, ge=1, description="Threads running Feast online reads.")
    log_flush_rows: int = Field(1000, ge=1, description="Flush the prediction log at this size.")
    log_flush_interval_s: float = Field(5.0, gt=0, description="... or at least this often.")
    ready_probe_ttl_s: float = Field(2.0, ge=0, description="Cache of the /readyz store probe.")
    warm_up_timeout_s: float = Field(
        5.0, gt=0, description="Budget of each worker's first store read, before it takes traffic."
    )
    # Requests are served on the event loop, but the model poller (loading a new version), the
    # log writer and SQLite reads run on threads; while one of them computes, the loop waits up
    # to CPython's GIL switch interval (default 5 ms) for its turn, which lands in p99 latency.
    gil_switch_interval_s: float = Field(
        0.001, gt=0, le=0.1, description="sys.setswitchinterval for `python -m serving`."
    )
    rule: RuleConfig = Field(default_factory=RuleConfig)
