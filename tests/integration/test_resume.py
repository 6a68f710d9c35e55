"""Resumable flows (flows/resume.py) on the session's Prefect server: a materialization killed
after k of n partitions and retried runs only the n - k it had not finished, and the store ends
as an uninterrupted run leaves it; a new run reuses nothing unless it is tagged to resume.

The runs that are killed or retried are child processes, started as a node and an operator
would start them: the flow called from Python, then Prefect's own `prefect flow-run retry`. Both
load tests/support/partition_probe at start-up, which logs every partition the engine really runs
and SIGKILLs the first run when partition k starts. Partitions run one at a time (a thread pool
of one), so "k finished" is exact, not a race.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flows.materialize import MaterializeParams, materialize_features
from flows.resume import resume_tag
from mlre.settings import PROJECT_ROOT, get_settings
from tests.integration.conftest import FeatureEnv, recent_config
from tests.support.partition_probe.sitecustomize import KILL_AT_ENV, PARTITION_LOG_ENV

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VIEW = "customer_daily_stats_fv"
PARTITIONS = 4
KILL_AT = 2  # partitions 0 and 1 finish, the process dies as partition 2 starts
PROBE = Path(__file__).resolve().parents[1] / "support" / "partition_probe"
ENTRYPOINT = "flows/materialize.py:materialize_features"
CHILD_TIMEOUT_S = 180

RUN_FLOW = """
import sys
from prefect import tags
from flows.materialize import MaterializeParams, materialize_features
with tags(sys.argv[1]):
    materialize_features(MaterializeParams(feature_views=[sys.argv[2]], partitions=int(sys.argv[3]),
                                           validate_sources=False))
"""


def _params() -> MaterializeParams:
    return MaterializeParams(feature_views=[VIEW], partitions=PARTITIONS, validate_sources=False)


@pytest.fixture
def use_store(monkeypatch: pytest.MonkeyPatch, prefect_harness: None) -> Iterator[Any]:
    """`use_store(env, results)`: this process and its children use `env`'s store, keep
    resumable results under `results`, and run partitions one at a time."""

    def use(env: FeatureEnv, results: Path) -> None:
        settings = env.settings
        for name, value in {
            "MLRE_HOME": str(settings.home),
            "MLRE_STORE_PROFILE": settings.store_profile,
            "MLRE_TASK_RUNNER": "in-process",
            "MLRE_RESULTS_URI": str(results),
            "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "1",
        }.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


def _child(argv: list[str], log: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """Run `argv` as a node would: this test's settings, the Prefect server, the probe loaded."""
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "PYTHONPATH": os.pathsep.join([str(PROBE), str(PROJECT_ROOT)]),
        PARTITION_LOG_ENV: str(log),
    }
    if kill_at is not None:
        env[KILL_AT_ENV] = str(kill_at)
    return subprocess.run(
        argv,
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )


def _ran(log: Path) -> list[int]:
    """The partitions of VIEW the engine started, in order."""
    lines = log.read_text().split("\n") if log.exists() else []
    return [int(line.split()[1]) for line in lines if line.startswith(f"{VIEW} ")]


def _flow_run(tag: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
        return run


def _partition_states(flow_run_id: Any, attempt: int) -> list[str]:
    """State names of the materialize-partition task runs of one attempt of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(
        run.state.name
        for run in runs
        if run.task_key.startswith("materialize_partition") and run.flow_run_run_count == attempt
    )


def _engine_runs(
    monkeypatch: pytest.MonkeyPatch, *, lose_first_write_of: int | None = None
) -> list[int]:
    """The partitions the engine really runs in this process, in order. With
    `lose_first_write_of`, that partition's first write is lost: it reports success, writes
    nothing (the fault a consistency check exists to catch)."""
    from mlre.features import materialize as engine

    ran: list[int] = []
    lost: list[int] = []
    real = engine.materialize_partition

    def probed(store: Any, feature_view: Any, window: Any, partition: int, *a: Any, **kw: Any):
        ran.append(partition)
        if partition == lose_first_write_of and not lost:
            lost.append(partition)
            return engine.PartitionResult(feature_view.name, partition, 0, 0, 0.0, None)
        return real(store, feature_view, window, partition, *a, **kw)

    monkeypatch.setattr(engine, "materialize_partition", probed)
    return ran


def _crash(flow_run_id: Any) -> None:
    """What the zombie automation does to a run whose heartbeats stopped (flows/automations)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Crashed(message="no heartbeat"), force=True)


def _state(flow_run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state_type.value


def test_a_run_killed_after_k_partitions_is_retried_and_runs_only_the_rest(
    make_feature_env: Callable[..., FeatureEnv], use_store: Any, tmp_path: Path
) -> None:
    reference = make_feature_env("local", config=recent_config())
    use_store(reference, tmp_path / "reference-results")
    materialize_features(_params())

    env = make_feature_env("local", config=recent_config())
    results, log = tmp_path / "results", tmp_path / "partitions.log"
    use_store(env, results)
    tag = f"resume-test-{uuid.uuid4().hex[:8]}"
    first = _child([sys.executable, "-c", RUN_FLOW, tag, VIEW, str(PARTITIONS)], log, KILL_AT)
    assert first.returncode == -9, first.stderr[-3000:]
    run = _flow_run(tag)
    assert _ran(log) == [0, 1, KILL_AT]  # two finished; the node died in the third
    assert _state(run.id) == "RUNNING"  # nothing told the server

    _crash(run.id)
    log.unlink()
    retry = _child(
        [
            sys.executable,
            "-m",
            "prefect",
            "flow-run",
            "retry",
            str(run.id),
            "--entrypoint",
            ENTRYPOINT,
        ],
        log,
    )
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
    assert _state(run.id) == "COMPLETED"
    assert _ran(log) == list(range(KILL_AT, PARTITIONS))  # only the missing partitions ran
    assert _partition_states(run.id, attempt=2) == ["Cached"] * KILL_AT + ["Completed"] * (
        PARTITIONS - KILL_AT
    )
    assert (results / str(run.id)).is_dir()  # one folder per run, the operator's to delete
    pd.testing.assert_frame_equal(env.online_rows(VIEW), reference.online_rows(VIEW))


def test_a_new_run_reuses_nothing_unless_tagged_to_resume(
    make_feature_env: Callable[..., FeatureEnv],
    use_store: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect import tags

    env = make_feature_env("local", config=recent_config())
    use_store(env, tmp_path / "results")
    ran = _engine_runs(monkeypatch)
    first = materialize_features(_params(), return_state=True)
    first_id = first.state_details.flow_run_id
    assert sorted(ran) == list(range(PARTITIONS))

    ran.clear()
    # A later run of its own, with the same parameters: nothing of the first run is reused.
    materialize_features(_params())
    assert sorted(ran) == list(range(PARTITIONS))

    ran.clear()
    with tags(resume_tag(str(first_id))):  # what remediate/rerun-crashed tags its re-run with
        resumed = materialize_features(_params(), return_state=True)
    assert resumed.is_completed()
    assert ran == []  # every step read back from the first run's results


def test_results_on_s3_are_read_back_by_a_resuming_run(
    make_feature_env: Callable[..., FeatureEnv],
    use_store: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cloud's layout: results under s3://<bucket>/<prefix>/<run>/ (a real S3 API, moto)."""
    from prefect import tags

    from tests.support.s3 import aws_test_env, running_s3

    env = make_feature_env("local", config=recent_config())
    with running_s3() as s3:
        for name, value in {**aws_test_env(tmp_path), "AWS_ENDPOINT_URL": s3.endpoint}.items():
            monkeypatch.setenv(name, value)
        s3.client().create_bucket(Bucket="feature-lake")
        use_store(env, tmp_path / "unused")
        monkeypatch.setenv("MLRE_RESULTS_URI", "s3://feature-lake/prefect-results/")
        get_settings.cache_clear()

        first = materialize_features(_params(), return_state=True)
        run_id = str(first.state_details.flow_run_id)
        stored = s3.keys("feature-lake", f"prefect-results/{run_id}/")
        assert sum("/materialize-partition-" in key for key in stored) == PARTITIONS

        with tags(resume_tag(run_id)):
            resumed = materialize_features(_params(), return_state=True)
        assert _partition_states(resumed.state_details.flow_run_id, 1) == ["Cached"] * PARTITIONS
    assert not (tmp_path / "unused").exists()


def test_a_failed_consistency_check_rolls_back_the_written_partitions(
    make_feature_env: Callable[..., FeatureEnv],
    use_store: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """feature-pipeline's transaction: one partition's write is lost (the fault), the real
    check fails, and the run's partition results are forgotten, so that its re-run (tagged to
    resume it) writes every partition again and passes; the plan is still read back."""
    from prefect import tags

    from flows.consistency import ConsistencyParams
    from flows.features import feature_pipeline
    from mlre.errors import ConsistencyError

    env = make_feature_env("local", config=recent_config())
    results = tmp_path / "results"
    use_store(env, results)
    ran = _engine_runs(monkeypatch, lose_first_write_of=3)
    check = ConsistencyParams(feature_views=[VIEW], sample_size=200)
    state = feature_pipeline(_params(), check, return_state=True)
    assert state.is_failed()
    with pytest.raises(ConsistencyError):
        state.result()
    scope = str(state.state_details.flow_run_id)
    kept = sorted(path.name.rsplit("-", 1)[0] for path in (results / scope).iterdir())
    assert "materialize-partition" not in kept  # rolled back
    assert "plan-window" in kept

    ran.clear()
    with tags(resume_tag(scope)):
        _, decision = feature_pipeline(_params(), check)
    assert sorted(ran) == list(range(PARTITIONS))
    assert decision.consistent
