"""GPU routing of prefect.yaml: only training that can use a GPU is sent to the GPU work pool."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import deploy
from flows.deploy import CPU, GPU, TrainingChoices
from mlre.errors import ConfigError

pytestmark = pytest.mark.unit

CPU_POOL = {"name": "{{ $MLRE_CPU_POOL }}", "job_variables": {"image": "{{ $MLRE_CPU_IMAGE }}"}}
GPU_POOL = {"name": "{{ $MLRE_GPU_POOL }}", "job_variables": {"image": "{{ $MLRE_GPU_IMAGE }}"}}
TRAIN = "flows/training.py:train_model"
PIPELINE = "flows/pipeline.py:ml_pipeline"


@pytest.fixture(scope="module")
def choices() -> TrainingChoices:
    """The real choices (TrainParams' defaults, mlre.training's families): built once."""
    return deploy.training_choices()


@pytest.fixture(scope="module")
def real_config() -> dict[str, Any]:
    return yaml.safe_load(deploy.PREFECT_YAML.read_text())


def _deployment(entrypoint: str, pool: dict[str, Any], parameters: Any = None) -> dict[str, Any]:
    item: dict[str, Any] = {"name": "fixture", "entrypoint": entrypoint, "work_pool": pool}
    if parameters is not None:
        item["parameters"] = parameters
    return copy.deepcopy(item)


def _train(pool: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A train-model deployment setting these TrainParams fields."""
    return _deployment(TRAIN, pool, {"params": fields})


def _pipeline(pool: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """An ml-pipeline deployment setting these TrainParams fields (nested under `train`)."""
    return _deployment(PIPELINE, pool, {"params": {"train": fields}})


def _pool(pool: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**pool, **changes}


def test_choices_are_train_params_defaults(choices: TrainingChoices) -> None:
    from flows.training import TrainParams

    assert choices.family == TrainParams().model_family == "hist_gradient_boosting"
    assert choices.device == TrainParams().device == "auto"
    assert choices.gpu_families == ("xgboost",)
    assert set(choices.gpu_families) < set(choices.families)
    assert set(choices.devices) == {"auto", "cpu", "cuda"}


# --- the real prefect.yaml ------------------------------------------------------------------


def test_real_prefect_yaml_is_routed_right(choices: TrainingChoices) -> None:
    routings = deploy.check_routing(deploy.PREFECT_YAML, choices)
    on_gpu = {r.deployment: (r.family, r.device) for r in routings if r.pool == GPU}
    assert on_gpu == {
        f"'weekly-gpu' ({PIPELINE})": ("xgboost", "cuda"),
        f"'gpu' ({TRAIN})": ("xgboost", "cuda"),
    }
    # The default family trains on the CPU pool: no paid GPU node left idle.
    on_cpu = {r.deployment: r.family for r in routings if r.pool == CPU and r.family}
    assert on_cpu == {
        f"'weekly' ({PIPELINE})": choices.family,
        f"'on-demand' ({TRAIN})": choices.family,
    }


def test_only_one_weekly_pipeline_schedule_is_active(real_config: dict[str, Any]) -> None:
    active = [
        item["name"]
        for item in real_config["deployments"]
        if item["entrypoint"] == PIPELINE
        for schedule in item.get("schedules", [])
        if schedule.get("active", True)
    ]
    # Two active weekly retrains would each gate and promote, racing for the champion alias.
    assert active == ["weekly"]


def test_prefect_reads_the_paused_gpu_schedule(real_config: dict[str, Any]) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    # Prefect's own model of prefect.yaml accepts the file (anchors and merge keys resolved).
    PrefectYamlModel.model_validate(real_config)
    (item,) = [d for d in real_config["deployments"] if d["name"] == "weekly-gpu"]
    (schedule,) = item["schedules"]
    converted = _schedule_config_to_deployment_schedule(schedule)
    assert converted["active"] is False
    assert converted["schedule"].cron == "0 3 * * 1"


def test_gpu_parameters_are_valid_flow_parameters(real_config: dict[str, Any]) -> None:
    from flows.pipeline import PipelineParams
    from flows.training import TrainParams

    by_name = {(d["entrypoint"], d["name"]): d for d in real_config["deployments"]}
    train = TrainParams.model_validate(by_name[(TRAIN, "gpu")]["parameters"]["params"])
    pipeline = PipelineParams.model_validate(
        by_name[(PIPELINE, "weekly-gpu")]["parameters"]["params"]
    )
    for params in (train, pipeline.train):
        assert (params.model_family, params.device) == ("xgboost", "cuda")


def test_local_deploy_sends_both_pools_to_the_process_pool() -> None:
    from mlre.settings import Settings

    env = deploy.deploy_env(Settings())
    assert env["MLRE_CPU_POOL"] == env["MLRE_GPU_POOL"] == "local"
    # Set, so Prefect substitutes "" instead of warning; the process pool ignores `image`.
    assert env["MLRE_CPU_IMAGE"] == env["MLRE_GPU_IMAGE"] == ""


# --- fixtures that must pass / must be refused ----------------------------------------------


@pytest.mark.parametrize(
    ("item", "pool", "family", "device"),
    [
        (_train(GPU_POOL, model_family="xgboost"), GPU, "xgboost", "auto"),
        (_train(CPU_POOL, model_family="xgboost"), CPU, "xgboost", "auto"),
        (_train(CPU_POOL, model_family="xgboost", device="cpu"), CPU, "xgboost", "cpu"),
        (_pipeline(CPU_POOL, model_family="random_forest"), CPU, "random_forest", "auto"),
        (_deployment(TRAIN, CPU_POOL, {"params": None}), CPU, "hist_gradient_boosting", "auto"),
        (_deployment("flows/drift.py:check_drift", CPU_POOL), CPU, None, None),
        (
            _train(_pool(GPU_POOL, name="k8s-gpu"), model_family="xgboost", device="cuda"),
            GPU,
            "xgboost",
            "cuda",
        ),
    ],
)
def test_good_layouts_pass(
    item: dict[str, Any],
    pool: str,
    family: str | None,
    device: str | None,
    choices: TrainingChoices,
) -> None:
    routing = deploy.route_deployment(item, choices)
    assert routing.problems == ()
    assert (routing.pool, routing.family, routing.device) == (pool, family, device)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # Today's mistake: the default (CPU-only) family on the GPU pool.
        (
            _deployment(PIPELINE, GPU_POOL),
            [
                "'hist_gradient_boosting', which cannot use a GPU",
                "*cpu_pool",
                "parameters.params.train.model_family",
            ],
        ),
        (
            _train(GPU_POOL, model_family="random_forest", device="auto"),
            ["'random_forest', which cannot use a GPU", "parameters.params.model_family"],
        ),
        # The pipeline nests TrainParams under `train`: a family at the top level is not seen.
        (
            _deployment(PIPELINE, GPU_POOL, {"params": {"model_family": "xgboost"}}),
            ["'hist_gradient_boosting', which cannot use a GPU"],
        ),
        (
            _train(GPU_POOL, model_family="xgboost", device="cpu"),
            ["device 'cpu' on the GPU pool", "parameters.params.device: cuda"],
        ),
        (
            _train(CPU_POOL, model_family="xgboost", device="cuda"),
            ["'cuda' on the CPU pool", "*gpu_pool"],
        ),
        (
            _pipeline(CPU_POOL, device="cuda"),
            ["'hist_gradient_boosting' cannot use a GPU", "'auto' or 'cpu'"],
        ),
        (_deployment("flows/drift.py:check_drift", GPU_POOL), ["does not train", "*cpu_pool"]),
        (_train(GPU_POOL, model_family="xgboots"), ["'xgboots' is not one of"]),
        (_train(CPU_POOL, device="gpu"), ["device 'gpu' is not one of"]),
        (
            _train(
                _pool(GPU_POOL, job_variables={"image": "{{ $MLRE_CPU_IMAGE }}"}),
                model_family="xgboost",
            ),
            ["{{ $MLRE_GPU_IMAGE }}", "only the GPU image"],
        ),
        (
            _train({"name": "{{ $MLRE_GPU_POOL }}"}, model_family="xgboost"),
            ["runs image None", "*gpu_pool"],
        ),
        (_train(_pool(CPU_POOL, name="gpu-pool")), ["'gpu-pool' is neither"]),
        (
            _deployment(TRAIN, CPU_POOL, {"params": ["xgboost"]}),
            ["parameters.params must be a mapping"],
        ),
    ],
)
def test_bad_layouts_are_refused_naming_what_to_change(
    item: dict[str, Any], expected: list[str], choices: TrainingChoices
) -> None:
    routing = deploy.route_deployment(item, choices)
    assert routing.problems, f"not refused: {item}"
    text = "\n".join(routing.problems)
    assert text.startswith(f"deployment 'fixture' ({item['entrypoint']}): ")
    for fragment in expected:
        assert fragment in text


BAD_YAML = """
definitions:
  work_pools:
    cpu: &cpu_pool
      name: "{{ $MLRE_CPU_POOL }}"
      job_variables: {image: "{{ $MLRE_CPU_IMAGE }}"}
    gpu: &gpu_pool
      name: "{{ $MLRE_GPU_POOL }}"
      job_variables: {image: "{{ $MLRE_GPU_IMAGE }}"}
deployments:
  - name: weekly
    entrypoint: flows/pipeline.py:ml_pipeline
    work_pool: *gpu_pool
  - name: gpu
    entrypoint: flows/training.py:train_model
    work_pool:
      <<: *gpu_pool
      job_variables: {image: "{{ $MLRE_GPU_IMAGE }}", gpu_limit: 2}
    parameters: {params: {model_family: xgboost, device: cuda}}
  - name: daily
    entrypoint: flows/inference.py:batch_inference
    work_pool: *cpu_pool
"""


def test_check_routing_names_every_misrouted_deployment(
    tmp_path: Path, choices: TrainingChoices
) -> None:
    path = tmp_path / "prefect.yaml"
    path.write_text(BAD_YAML)
    with pytest.raises(ConfigError) as raised:
        deploy.check_routing(path, choices)
    message = str(raised.value)
    assert str(path) in message
    assert "1 deployment(s)" in message
    assert f"deployment 'weekly' ({PIPELINE})" in message
    assert "'gpu'" not in message  # merged pool with an extra job variable: routed right


def test_deploy_all_refuses_a_misrouted_prefect_yaml_before_deploying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choices: TrainingChoices
) -> None:
    from mlre.settings import Settings

    path = tmp_path / "prefect.yaml"
    path.write_text(BAD_YAML)
    monkeypatch.setattr(deploy, "PREFECT_YAML", path)
    monkeypatch.setattr(deploy, "training_choices", lambda: choices)

    def no_deploy(*args: object, **kwargs: object) -> None:
        raise AssertionError("prefect deploy ran despite a misrouted deployment")

    monkeypatch.setattr(deploy.subprocess, "run", no_deploy)
    with pytest.raises(ConfigError, match="'weekly'"):
        deploy.deploy_all(Settings())
