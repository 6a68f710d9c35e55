"""Serving benchmark: our /predict on a Redis online store vs. Feast's own `feast serve` (features
only), each driven at a fixed rate by a load generator in another process.

Everything runs on 127.0.0.1 under `.mlre/bench/serving/`: a redis-server and a lean MLflow server
(the test-support starters, from PyPI wheels), a temp Feast repo (the project's definitions, a
Redis online store, file registry), two registered model versions. Our service runs as production
runs it (`python -m serving`, its own process); the champion alias moves to the other version
half-way through the run. The load generator (asyncio + httpx, open loop: requests are sent on
schedule whether or not earlier ones have answered) reports p50/p99 latency and errors; the
service's CPU time per request and mean micro-batch size say where the time went.

Run with `python -m bench.serving [--rate 200 --duration 30]`; results: bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlre import supervisor
from mlre.data.generator import GeneratorConfig
from mlre.settings import PROJECT_ROOT, Settings, apply_runtime_env
from mlre.waiting import wait_until

RESULTS_PATH = PROJECT_ROOT / "bench" / "results" / "serving.json"
TARGETS = {"p99_ms": 10.0, "errors": 0}
N_CUSTOMERS = 2_000
FIRST_CUSTOMER = GeneratorConfig.customer_id_offset  # ids the generator writes
DAILY_VIEW = "customer_daily_stats_fv"

STORE_YAML = """project: fraud_detection
provider: local
registry:
  registry_type: file
  path: {home}/feast/registry.db
  cache_ttl_seconds: 60
online_store:
  type: redis
  connection_string: {redis}
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Until `url` answers below 500; fails at once if the server process exits."""
    import httpx

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    def exited(_: float) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited with code {proc.returncode}")

    wait_until(
        answers, timeout_s=timeout_s, what=f"{url} answering", interval_s=0.2, on_poll=exited
    )


def _load(url: str, rate: float, duration: float, features: list[str] | None = None) -> dict:
    """`python -m bench.loadgen` in its own process (20 warm-up requests, not measured)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        command = [
            sys.executable, "-m", "bench.loadgen", url, "--rate", str(rate),
            "--duration", str(duration), "--warmup", "20", "--customers", str(N_CUSTOMERS),
            "--first-customer", str(FIRST_CUSTOMER), "--out", str(out),
        ]  # fmt: skip
        if features:
            command += ["--features", ",".join(features)]
        subprocess.run(command, cwd=PROJECT_ROOT, check=True, timeout=duration + 180)
        report = json.loads(out.read_text())
    totals = report["totals"]
    keys = ("requests", "errors", "error_kinds", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    return {
        **{key: totals[key] for key in keys},
        "achieved_rps": report["achieved_rps"],
        "send_lag_p99_ms": report["send_lag_p99_ms"],
        "p99_ms_by_10s_window": [window["p99_ms"] for window in report["windows"]],
    }


def _prepare(root: Path, redis_conn: str, tracking_uri: str) -> tuple[Settings, Any]:
    """Temp repo with a Redis store, generated sources, materialized view, two model versions;
    returns the settings and (store, versions, the feature env `register_model` takes)."""
    from mlre.data.generator import generate_sources, write_sources
    from mlre.features.materialize import Window, materialize_view
    from mlre.features.store import apply_repo, open_store
    from tests.integration.test_serving import register_model

    home, repo = root / "home", root / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "feature_repo" / "definitions.py", repo / "definitions.py")
    (repo / "feature_store.yaml").write_text(STORE_YAML.format(home=home, redis=redis_conn))
    settings = Settings(home=home, feature_repo=repo, mlflow_uri=tracking_uri)
    settings = settings.model_copy(update={"model_name": "bench-serving"})
    settings.ensure_dirs()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    config = GeneratorConfig(n_customers=N_CUSTOMERS, start=today - timedelta(days=8), days=8)
    write_sources(generate_sources(config), settings.lake_dir)
    store = open_store(settings)
    apply_repo(store, repo, settings)
    end = datetime.now(UTC)
    view = store.get_feature_view(DAILY_VIEW)
    materialize_view(store, view, Window(end - timedelta(days=30), end), partitions=1)
    env = SimpleNamespace(store=store, config=config)
    versions = [register_model(env, tracking_uri, settings.model_name, seed=s) for s in (0, 1)]
    return settings, (store, versions, env)


@contextmanager
def _serving_process(
    settings: Settings,
    port: int,
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m serving` as production runs it, in its own process; SIGTERM at the end. Its
    output goes to `log_path` when given, else to this process' own; `extra_env` adds settings."""
    env = {
        **os.environ,
        **settings.runtime_env(),
        "MLRE_FEATURE_REPO": str(settings.feature_repo),
        "MLRE_MLFLOW_URI": settings.mlflow_tracking_uri,
        "MLRE_MODEL_NAME": settings.model_name,
        "MLRE_SERVING_PORT": str(port),
        "MLRE_SERVING_POLL_INTERVAL_S": "1",
        **(extra_env or {}),
    }
    output = log_path.open("ab") if log_path is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving"], cwd=PROJECT_ROOT, env=env, start_new_session=True,
        stdout=output, stderr=subprocess.STDOUT if output else None,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout_s=120)
        yield proc
    finally:
        supervisor.stop_popen(proc, grace_s=30)
        if output is not None:
            output.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process and its children have used so far."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:  # feast serve may fork workers
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def _scrape(port: int) -> dict[str, Any]:
    """Predictions by version and route, and the mean micro-batch size, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    served: dict[str, float] = {}
    batch = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlre_serving_predictions_total":
                key = f"{sample.labels['model_version']}/{sample.labels['route']}"
                served[key] = served.get(key, 0.0) + sample.value
            elif sample.name.startswith("mlre_serving_batch_instances_"):
                suffix = sample.name.rsplit("_", 1)[-1]
                if suffix in batch:
                    batch[suffix] = sample.value
    mean_batch = batch["sum"] / batch["count"] if batch["count"] else None
    return {"served_by_version_route": served, "mean_batch_instances": mean_batch}


def _ours(settings: Settings, versions: list[str], rate: float, duration: float) -> dict:
    """Our /predict in its own process; the champion alias moves half-way through the run."""
    from mlflow import MlflowClient

    from mlre.supervisor import free_port

    client = MlflowClient(settings.mlflow_tracking_uri)
    client.set_registered_model_alias(settings.model_name, "champion", versions[0])
    port = free_port()
    with _serving_process(settings, port) as proc:
        mover = threading.Timer(
            duration / 2,
            lambda: client.set_registered_model_alias(settings.model_name, "champion", versions[1]),
        )
        mover.start()
        try:
            result = _measured(proc.pid, f"http://127.0.0.1:{port}/predict", rate, duration)
        finally:
            mover.cancel()
        scraped = _scrape(port)
    return {**result, **scraped, "alias_moved_at_s": duration / 2}


@contextmanager
def _process(command: list[str], env: dict[str, str], health_url: str) -> Iterator[int]:
    """A server process for one side of the benchmark: its pid while it answers health_url."""
    proc = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_http(health_url, proc, timeout_s=90)
        yield proc.pid
    finally:
        supervisor.stop_popen(proc, grace_s=15)


def _measured(
    pid: int, url: str, rate: float, duration: float, features: list[str] | None = None
) -> dict:
    """Load results plus the server's CPU time per request and the machine's load average."""
    cpu_before = _cpu_s(pid)
    result = _load(url, rate, duration, features)
    cpu = _cpu_s(pid) - cpu_before
    return {
        **result,
        "service_cpu_ms_per_request": round(1000 * cpu / max(result["requests"], 1), 3),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }


def _floor(settings: Settings, rate: float, duration: float) -> dict:
    """bench.floor_app under uvicorn: the same HTTP schema with a constant answer."""
    from mlre.supervisor import free_port

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    env = {**os.environ, **settings.runtime_env()}
    with _process(command, env, f"http://127.0.0.1:{port}/openapi.json") as pid:
        return _measured(pid, f"http://127.0.0.1:{port}/predict", rate, duration)


def _reference(settings: Settings, store: Any, rate: float, duration: float) -> dict:
    """`feast serve` on the same repo and Redis: feature fetch only (the daily view's features)."""
    from mlre.supervisor import free_port

    port = free_port()
    features = [f"{DAILY_VIEW}:{f.name}" for f in store.get_feature_view(DAILY_VIEW).features]
    feast_bin = str(Path(sys.executable).with_name("feast"))
    command = [feast_bin, "-c", str(settings.feature_repo), "serve", "-h", "127.0.0.1", "-p",
               str(port), "--no-access-log"]  # fmt: skip
    env = {**os.environ, **settings.runtime_env()}
    with _process(command, env, f"http://127.0.0.1:{port}/health") as pid:
        url = f"http://127.0.0.1:{port}/get-online-features"
        return {**_measured(pid, url, rate, duration, features), "features": features}


def _notes(ours: dict, floor: dict, reference: dict) -> list[str]:
    """What the numbers say, computed from them."""
    return [
        f"HTTP floor (bench.floor_app: same request/response models, constant answer, same load "
        f"generator): p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms. The service adds "
        f"{ours['p50_ms'] - floor['p50_ms']:.1f} ms at p50 and "
        f"{ours['p99_ms'] - floor['p99_ms']:.1f} ms at p99: Feast read, on-demand view, model, "
        "log and queueing behind other requests.",
        f"CPU per request: ours {ours['service_cpu_ms_per_request']} ms (mean micro-batch "
        f"{(ours['mean_batch_instances'] or 0):.2f} instances), feast serve "
        f"{reference['service_cpu_ms_per_request']} ms (fetch only), floor "
        f"{floor['service_cpu_ms_per_request']} ms.",
        f"Machine load average after each side (2 cores, shared): ours "
        f"{ours['load_avg_1m_after']}, floor {floor['load_avg_1m_after']}, feast serve "
        f"{reference['load_avg_1m_after']}.",
    ]


def main() -> None:
    """Start the servers, run both sides once, write the results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()

    from tests.support.mlflow_server import start_mlflow
    from tests.support.servers import start_redis

    root = PROJECT_ROOT / ".mlre" / "bench" / "serving"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    apply_runtime_env(Settings(home=root / "home"))
    redis, mlflow_server = start_redis(root), start_mlflow(root)
    try:
        settings, (store, versions, _) = _prepare(
            root, redis.connection_string, mlflow_server.tracking_uri
        )
        ours = _ours(settings, versions, args.rate, args.duration)
        floor = _floor(settings, args.rate, args.duration)
        reference = _reference(settings, store, args.rate, args.duration)
    finally:
        mlflow_server.stop()
        redis.stop()
    met = {
        "ours_p99": ours["p99_ms"] <= TARGETS["p99_ms"],
        "ours_errors": ours["errors"] == TARGETS["errors"],
    }
    results = {
        "what": (
            f"POST /predict (1 instance: Feast Redis online read + on-demand features + sklearn "
            f"model) at {args.rate:g} req/s for {args.duration:g} s, open loop, load generator in "
            "another process; champion alias moved half-way. Reference: `feast serve` "
            "/get-online-features for the daily view's features (fetch only), same Redis, rate; "
            "floor: the same HTTP schema answering a constant (bench.floor_app)."
        ),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "ours": ours,
        "floor_http_only": floor,
        "reference_feast_serve": reference,
        "targets": TARGETS,
        "met": met,
        "notes": _notes(ours, floor, reference),
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
