"""`python -m serving`: the prediction service under uvicorn on settings.host:MLRE_SERVING_PORT."""

from __future__ import annotations

import gc
import logging
import os
import sys


def main() -> None:
    """Build the app from the environment and serve it until SIGTERM/SIGINT."""
    # One process: keep prometheus_client in its in-memory mode. Importing Feast (through
    # MLflow's plugins) sets PROMETHEUS_MULTIPROC_DIR, so decide before anything imports it.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import prometheus_client  # noqa: F401
    import uvicorn

    from mlre.serving_config import ServingConfig
    from mlre.settings import apply_runtime_env, get_settings
    from serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    apply_runtime_env(settings)
    # Models load through skops with the platform's allow-list (mlre.model_files), never through
    # MLflow's unpickler; keep that refused here unless the operator turns it on explicitly.
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    config = ServingConfig()
    sys.setswitchinterval(config.gil_switch_interval_s)
    app = create_app(settings, config)
    # Feast, MLflow, scikit-learn and pandas leave ~360k long-lived objects behind at import; a
    # full collection scans them all (~200 ms here), a pause that lands in p99. Frozen objects
    # are skipped by the collector; what requests allocate is still collected as usual.
    gc.freeze()
    # uvicorn turns SIGTERM into a graceful shutdown: in-flight requests finish, then the
    # lifespan exit flushes the prediction log.
    uvicorn.run(
        app,
        host=settings.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
