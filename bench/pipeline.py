"""Orchestration overhead (issue 3): the whole ml-pipeline through the real Prefect and MLflow
servers against the same core functions called from a plain script (MLflow on a local SQLite URI,
no Prefect), on the same 200k-row data, in one run.

Each side runs in its own subprocess with its own MLRE_HOME so neither warms the other's caches.
Per-stage seconds come from the subflow runs' own start/end times (Prefect API) and from timers
around the same calls in the plain script. Target: total ratio <= 1.3.

Run: `python -m bench.pipeline` (or `make bench`). Results: bench/results/pipeline.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlre.settings import PROJECT_ROOT, Settings

CUSTOMERS, DAYS, SEED = 4_000, 50, 7  # 200k daily rows, ~40k labels, ~300k hourly rows
ROOT = PROJECT_ROOT / ".mlre" / "bench" / "pipeline"
RESULTS = PROJECT_ROOT / "bench" / "results" / "pipeline.json"
STAGES = (
    "materialize-features",
    "validate-feature-consistency",
    "train-model",
    "evaluate-model",
    "promote-model",
    "batch-inference",
)
TARGET_RATIO = 1.3
OURS = (
    "ml-pipeline flow on a real Prefect server and a real (lean) MLflow server: default task "
    "runner, state writes and artifacts on every subflow"
)
BASELINE = "the same mlre core functions called from a plain script, MLflow on a SQLite file"
NOTES = (
    "Totals are each subprocess's wall time after its imports; the orchestrated side also pays "
    "server round trips, state writes and artifacts. One run on a shared 2-core machine."
)


def log(message: str) -> None:
    print(f"[bench.pipeline {datetime.now():%H:%M:%S}] {message}", flush=True)


def prepare(home: Path) -> Settings:
    """A fresh home with the same generated sources on both sides."""
    from mlre.data.lake import demo_config, land_demo_sources

    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(home=home)
    settings.ensure_dirs()
    config = demo_config(customers=CUSTOMERS, days=DAYS, seed=SEED)
    land_demo_sources(config, settings.lake_dir, now=datetime.now(UTC))
    return settings


@dataclass
class PlainRun:
    """The pipeline's stages as plain calls of the core: no Prefect, MLflow on a SQLite file."""

    settings: Settings
    store: Any
    config: Any
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return self.settings.mlflow_tracking_uri

    @property
    def name(self) -> str:
        return self.settings.model_name

    def timed(self, stage: str, fn: Any) -> Any:
        began = time.perf_counter()
        value = fn()
        self.stages[stage] = round(time.perf_counter() - began, 3)
        return value

    def materialize(self) -> None:
        from mlre.features import materialize as engine
        from mlre.features.store import apply_repo

        apply_repo(self.store, self.settings.feature_repo, self.settings)
        now = engine.utcnow()
        for fv in self.store.list_feature_views():
            start, _ = engine.source_time_range(engine.view_spec(self.store, fv))
            engine.materialize_view(self.store, fv, engine.Window(start, now))

    def check(self) -> None:
        from mlre.features import consistency
        from mlre.features import materialize as engine

        for fv in self.store.list_feature_views(allow_cache=False):
            consistency.check_view(
                self.store,
                fv,
                engine.view_spec(self.store, fv),
                sample_size=1_000,
                seed=0,
                tolerance=1e-6,
            )

    def labels(self, start: datetime | None = None, end: datetime | None = None) -> Any:
        from mlre.data.lake import read_events

        folder = self.settings.lake_dir / "sources" / "transactions"
        return read_events(folder, start=start, end=end)

    def train(self) -> tuple[Any, Any]:
        from mlre import training

        built = training.build_training_set(self.store, self.labels(), self.config)
        split = training.split_by_time(built.frame, self.config)
        model = training.train(split, self.config)
        logged = training.log_training_run(
            model,
            built,
            split,
            self.config,
            model_name=self.name,
            feast_project=self.store.project,
            tracking_uri=self.uri,
        )
        return split, logged

    def evaluate(self, split: Any, logged: Any) -> None:
        """As the flow: rebuild the held-out window from Feast, score, plot, gate, tag."""
        from mlflow import MlflowClient

        from mlre import evaluation, inference, registry, training

        client = MlflowClient(self.uri)
        start = split.test[self.config.timestamp_column].min()
        held_out = training.build_training_set(self.store, self.labels(start), self.config).frame
        model = inference.load_version(self.uri, self.name, logged.version)
        y = held_out[self.config.label_column].astype(int)
        threshold = float(client.get_model_version(self.name, logged.version).tags["threshold"])
        result = evaluation.evaluate(
            model,
            held_out,
            y,
            threshold,
            ["merchant_category", "preferred_channel"],
            version=logged.version,
        )
        with tempfile.TemporaryDirectory() as tmp:
            scores = evaluation.score(model, held_out)
            for plot in evaluation.save_plots(y, scores, threshold, Path(tmp), "held-out"):
                client.log_artifact(logged.run_id, str(plot), artifact_path="evaluation")
        decision = evaluation.gate(result, None)
        for key, value in evaluation.decision_tags(decision).items():
            client.set_model_version_tag(self.name, logged.version, key, value)
        registry.mark_challenger(client, self.name, logged.version, decision.reasons)

    def promote(self, logged: Any) -> None:
        from mlflow import MlflowClient

        from mlre import registry

        registry.promote(
            MlflowClient(self.uri),
            self.name,
            logged.version,
            reason="bench",
            run_id="bench",
            actor="bench",
            lock=registry.file_lock(self.settings),
        )

    def infer(self) -> None:
        from mlre import inference, prediction_log

        model, version, service = inference.load_champion(self.uri, self.name)
        end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        requests = self.labels(end - timedelta(days=1), end).drop(columns=["is_fraud"])
        scored = inference.score_frame(
            self.store, model, service, requests, model_name=self.name, model_version=version
        )
        prediction_log.write_predictions(
            scored, self.settings.prediction_log_root, self.name, run_id="bench"
        )


def plain(home: Path) -> dict[str, float]:
    """Run every stage of the plain script in the pipeline's order."""
    from mlre import training
    from mlre.features.store import open_store

    settings = Settings(home=home, mlflow_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = PlainRun(settings, open_store(settings), training.TrainingConfig())
    run.timed("materialize-features", run.materialize)
    run.timed("validate-feature-consistency", run.check)
    split, logged = run.timed("train-model", run.train)
    run.timed("evaluate-model", lambda: run.evaluate(split, logged))
    run.timed("promote-model", lambda: run.promote(logged))
    run.timed("batch-inference", run.infer)
    return run.stages


def orchestrated(home: Path) -> dict[str, float]:
    """The ml-pipeline flow through a real Prefect server and a real MLflow server."""
    from prefect.client.orchestration import get_client

    from flows.pipeline import ml_pipeline

    state = ml_pipeline(return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"ml-pipeline ended {state.type}: {state.message}")
    stages: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs():
            flow = client.read_flow(run.flow_id).name
            if run.start_time and run.end_time:
                stages[flow] = round((run.end_time - run.start_time).total_seconds(), 3)
    return stages


def warm_imports(kind: str) -> None:
    """Import everything a side uses before its clock starts: imports are not orchestration."""
    import mlflow.sklearn  # noqa: F401

    import mlre.evaluation
    import mlre.features.store
    import mlre.inference
    import mlre.prediction_log
    import mlre.training  # noqa: F401

    if kind != "plain":
        import flows.pipeline  # noqa: F401


def child(kind: str, home: Path, out: Path) -> None:
    """Runs in a subprocess: one side of the comparison, total wall time included."""
    warm_imports(kind)
    began = time.perf_counter()
    stages = plain(home) if kind == "plain" else orchestrated(home)
    total = round(time.perf_counter() - began, 3)
    out.write_text(json.dumps({"stages": stages, "total_s": total}))


def run_side(kind: str, home: Path, env: dict[str, str]) -> dict[str, Any]:
    out = home.parent / f"{kind}.json"
    command = [sys.executable, "-m", "bench.pipeline", "--child", kind, str(home), str(out)]
    subprocess.run(command, env=env, check=True, cwd=PROJECT_ROOT, timeout=1200)
    return json.loads(out.read_text())


def main() -> None:
    """Prepare both homes, run the plain script, then the platform, and write the JSON."""
    from mlre import local_platform
    from mlre.supervisor import free_port

    base = {**os.environ, **Settings().runtime_env()}
    plain_home, flow_home = ROOT / "plain", ROOT / "prefect"
    log(f"generating {CUSTOMERS} customers x {DAYS} days in two homes ...")
    prepare(plain_home)
    # No monitoring stack: the benchmark measures Prefect's overhead, not the SLI pushes.
    settings = prepare(flow_home).model_copy(
        update={"prefect_port": free_port(), "mlflow_port": free_port(), "monitoring": False}
    )
    log("plain script (no Prefect, MLflow on SQLite) ...")
    plain_result = run_side("plain", plain_home, {**base, "MLRE_HOME": str(plain_home)})
    log(f"plain: {plain_result['total_s']} s")
    local_platform.up(settings, echo=log)
    try:
        env = {
            **base,
            **settings.client_env(),
            "MLRE_PREFECT_PORT": str(settings.prefect_port),
            "MLRE_MLFLOW_PORT": str(settings.mlflow_port),
            "MLRE_MONITORING": "false",
        }
        log("ml-pipeline through the real Prefect and MLflow servers ...")
        flow_result = run_side("prefect", flow_home, env)
    finally:
        local_platform.down(settings, echo=log)
    ratio = round(flow_result["total_s"] / plain_result["total_s"], 3)
    log(f"orchestrated: {flow_result['total_s']} s, ratio {ratio}")
    result = {
        "benchmark": "orchestration overhead of the ml-pipeline",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "what_ran": {
            "customers": CUSTOMERS,
            "days": DAYS,
            "daily_source_rows": CUSTOMERS * DAYS,
            "store": "local profile (SQLite online store, file offline store)",
            "model_family": "hist_gradient_boosting (TrainingConfig default)",
            "ours": OURS,
            "baseline": BASELINE,
            "machine": {"cpus": os.cpu_count()},
        },
        "stages_s": {
            stage: {
                "orchestrated": flow_result["stages"].get(stage),
                "plain": plain_result["stages"].get(stage),
            }
            for stage in STAGES
        },
        "ours_total_s": flow_result["total_s"],
        "baseline_total_s": plain_result["total_s"],
        "ratio": ratio,
        "target": {"ratio_max": TARGET_RATIO},
        "met": {"ratio": ratio <= TARGET_RATIO},
        "notes": NOTES,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results in {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
