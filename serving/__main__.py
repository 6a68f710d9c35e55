"""`python -m serving`: the prediction service under uvicorn on settings.host:MLRE_SERVING_PORT,
in MLRE_SERVING_WORKERS processes sharing the port."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("serving")

APP_FACTORY = "serving.app:app_from_environment"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # serving.metrics imports prometheus_client


def metrics_dir(run_dir: Path, parent_pid: int) -> Path:
    """Where the workers of the service started by `parent_pid` keep their metric files."""
    return run_dir / f"serving-metrics-{parent_pid}"


def fresh_dir(path: Path) -> Path:
    """`path` created empty: files of an earlier process with the same pid would be summed in."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> None:
    """Serve until SIGTERM/SIGINT: one process, or uvicorn's supervisor and its workers."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import uvicorn

    from mlre.serving_config import ServingConfig
    from mlre.settings import apply_runtime_env, get_settings

    settings = get_settings()
    apply_runtime_env(settings)  # workers inherit it (TMPDIR, MLflow's and Feast's homes)
    config = ServingConfig()
    # prometheus_client picks its mode when first imported, from this variable. One process:
    # in-memory (Importing Feast, through MLflow's plugins, would set it: decide first). Several:
    # the workers, spawned with this environment, share the files of a directory we own.
    shared = fresh_dir(metrics_dir(settings.run_dir, os.getpid())) if config.workers > 1 else None
    if shared is None:
        os.environ.pop(MULTIPROC_DIR_ENV, None)
    else:
        os.environ[MULTIPROC_DIR_ENV] = str(shared)
    import prometheus_client  # noqa: F401

    log.info("Serving on port %d with %d worker process(es)", config.port, config.workers)
    try:
        # Each worker turns SIGTERM into a graceful shutdown: in-flight requests finish, then the
        # lifespan exit drains the micro-batcher and flushes the prediction log. With workers,
        # the supervisor forwards SIGTERM/SIGINT to every worker and waits for all of them.
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            workers=config.workers,
            host=settings.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


if __name__ == "__main__":
    main()
