"""Deploy every flow in prefect.yaml to the local platform, run a worker, and follow a run.

The same prefect.yaml serves the cloud: there MLRE_CPU_POOL / MLRE_GPU_POOL name the Kubernetes
pools (`k8s-cpu`, `k8s-gpu`); here both are the `local` process pool. `check_routing` keeps
the file's GPU routing right: only training that can use a GPU is sent to the GPU pool.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from mlre import k8s_labels, local_platform
from mlre.errors import ConfigError, PlatformError
from mlre.settings import PROJECT_ROOT, Settings
from mlre.waiting import WaitTimeout, wait_until

WORKER = f"worker-{k8s_labels.LOCAL_WORK_POOL}"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"

CPU, GPU = "cpu", "gpu"
# What a deployment's `work_pool.name` may say, and the image each kind of pool must run.
POOL_KINDS: dict[str, str] = {
    "{{ $MLRE_CPU_POOL }}": CPU,
    "{{ $MLRE_GPU_POOL }}": GPU,
    k8s_labels.CPU_WORK_POOL: CPU,
    k8s_labels.GPU_WORK_POOL: GPU,
}
POOL_IMAGES: dict[str, str] = {CPU: "{{ $MLRE_CPU_IMAGE }}", GPU: "{{ $MLRE_GPU_IMAGE }}"}
POOL_ANCHORS: dict[str, str] = {CPU: "*cpu_pool", GPU: "*gpu_pool"}
# Flows that train, and where their TrainParams sit in a deployment's `parameters`.
TRAINING_PARAMETERS: dict[str, tuple[str, ...]] = {
    "flows/training.py:train_model": ("params",),
    "flows/pipeline.py:ml_pipeline": ("params", "train"),
}


def deploy_env(settings: Settings) -> dict[str, str]:
    """What prefect.yaml's `{{ $VAR }}` placeholders read on one machine."""
    return {
        **local_platform.child_env(settings),
        "MLRE_PROJECT_DIR": str(PROJECT_ROOT),
        "MLRE_CPU_POOL": k8s_labels.LOCAL_WORK_POOL,
        "MLRE_GPU_POOL": k8s_labels.LOCAL_WORK_POOL,
        # The process pool runs no image; set (empty) so Prefect does not warn per deployment.
        "MLRE_CPU_IMAGE": "",
        "MLRE_GPU_IMAGE": "",
    }


@dataclass(frozen=True)
class TrainingChoices:
    """TrainParams' default family and device, the values it accepts, the GPU-capable families."""

    family: str
    device: str
    families: tuple[str, ...]
    devices: tuple[str, ...]
    gpu_families: tuple[str, ...]


def training_choices() -> TrainingChoices:
    """The choices as flows.training.TrainParams and mlre.training define them."""
    # Imported here: the training modules pull in Feast, scikit-learn and XGBoost.
    from flows.training import TrainParams
    from mlre import training

    fields = TrainParams.model_fields
    return TrainingChoices(
        family=fields["model_family"].default,
        device=fields["device"].default,
        families=tuple(training.MODEL_FAMILIES),
        devices=get_args(training.Device),
        gpu_families=tuple(training.GPU_FAMILIES),
    )


@dataclass(frozen=True)
class Routing:
    """Where one deployment runs, what it trains there, and what is wrong with that (if any)."""

    deployment: str
    pool: str | None  # CPU, GPU, or None: a pool name prefect.yaml should not use
    family: str | None  # None: the flow does not train
    device: str | None
    problems: tuple[str, ...]


def _training_overrides(parameters: Any, path: tuple[str, ...]) -> dict[str, Any] | str:
    """The TrainParams fields a deployment sets (at `path` in its parameters), or a problem."""
    current = parameters if parameters is not None else {}
    for depth, key in enumerate(path):
        if not isinstance(current, dict):
            where = ".".join(("parameters", *path[:depth]))
            return f"{where} must be a mapping, not {current!r}"
        current = current.get(key) or {}
    if not isinstance(current, dict):
        return f"parameters.{'.'.join(path)} must be a mapping, not {current!r}"
    return current


def _training_problems(
    pool: str | None, family: str, device: str, setting: str, choices: TrainingChoices
) -> list[str]:
    """Why this family/device does not belong on this pool; empty when it does."""
    if family not in choices.families:
        return [f"{setting}.model_family {family!r} is not one of {list(choices.families)}"]
    if device not in choices.devices:
        return [f"{setting}.device {device!r} is not one of {list(choices.devices)}"]
    gpu_family = family in choices.gpu_families
    if pool == GPU and not gpu_family:
        return [
            f"trains {family!r}, which cannot use a GPU, on the GPU pool (a paid GPU node left "
            f"idle): use work_pool: *cpu_pool, or set {setting}.model_family to one of "
            f"{list(choices.gpu_families)}"
        ]
    if pool == GPU and device == "cpu":
        return [
            f"trains {family!r} with device 'cpu' on the GPU pool (a paid GPU node left idle): "
            f"use work_pool: *cpu_pool, or set {setting}.device: cuda"
        ]
    if device == "cuda" and not gpu_family:
        return [
            f"asks for device 'cuda' but {family!r} cannot use a GPU: set {setting}.device "
            f"to 'auto' or 'cpu', or model_family to one of {list(choices.gpu_families)}"
        ]
    if pool == CPU and device == "cuda":
        return [
            f"asks for device 'cuda' on the CPU pool, whose nodes have no GPU (the run would "
            f"fail): use work_pool: *gpu_pool, or set {setting}.device to 'auto' or 'cpu'"
        ]
    return []


def route_deployment(item: dict[str, Any], choices: TrainingChoices) -> Routing:
    """One prefect.yaml deployment: its pool, the family/device its parameters choose (defaults
    from TrainParams), and every way that breaks the GPU routing rules."""
    entrypoint = item.get("entrypoint", "")
    name = f"{item.get('name')!r} ({entrypoint})"
    work_pool = item.get("work_pool") or {}
    pool_name = work_pool.get("name")
    pool = POOL_KINDS.get(pool_name) if isinstance(pool_name, str) else None
    problems: list[str] = []
    if pool is None:
        problems.append(
            f"work pool {pool_name!r} is neither the CPU nor the GPU pool: use work_pool: "
            "*cpu_pool or *gpu_pool"
        )
    family = device = None
    path = TRAINING_PARAMETERS.get(entrypoint)
    if path is None:
        if pool == GPU:
            problems.append(
                "does not train, yet runs on the GPU pool (a paid GPU node left idle): "
                "use work_pool: *cpu_pool"
            )
    else:
        overrides = _training_overrides(item.get("parameters"), path)
        if isinstance(overrides, str):
            problems.append(overrides)
        else:
            family = overrides.get("model_family", choices.family)
            device = overrides.get("device", choices.device)
            setting = ".".join(("parameters", *path))
            problems += _training_problems(pool, family, device, setting, choices)
    image = (work_pool.get("job_variables") or {}).get("image")
    if pool is not None and image != POOL_IMAGES[pool]:
        why = " (only the GPU image has xgboost built with CUDA)" if pool == GPU else ""
        problems.append(
            f"runs image {image!r}, not the {pool.upper()} pool's {POOL_IMAGES[pool]!r}{why}: "
            f"take job_variables from {POOL_ANCHORS[pool]}"
        )
    return Routing(name, pool, family, device, tuple(f"deployment {name}: {p}" for p in problems))


def route_deployments(config: dict[str, Any], choices: TrainingChoices) -> list[Routing]:
    """Every deployment of a parsed prefect.yaml, routed."""
    return [route_deployment(item, choices) for item in config.get("deployments") or []]


def check_routing(
    path: str | Path | None = None, choices: TrainingChoices | None = None
) -> list[Routing]:
    """Route every deployment in prefect.yaml (the project's by default); ConfigError naming
    each one that is misrouted."""
    import yaml

    path = Path(path or PREFECT_YAML)
    config = yaml.safe_load(path.read_text())
    routings = route_deployments(config, choices or training_choices())
    problems = [problem for routing in routings for problem in routing.problems]
    if problems:
        raise ConfigError(
            f"{path}: {len(problems)} deployment(s) break the GPU routing rules (only training "
            "of a GPU-capable family with device cuda/auto goes to the GPU pool):\n  "
            + "\n  ".join(problems)
        )
    return routings


def ensure_local_pool(name: str = k8s_labels.LOCAL_WORK_POOL) -> bool:
    """Create the process work pool if it is missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                return False
            return True


def deployment_names() -> list[str]:
    """`flow/deployment` names on the server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        return sorted(f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments())


def deploy_all(settings: Settings) -> str:
    """`prefect --no-prompt deploy --all` from the project root; its output, or a PlatformError."""
    check_routing()  # a misrouted deployment is refused before anything is deployed
    prefect = str(local_platform.venv_bin() / "prefect")
    result = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        cwd=PROJECT_ROOT,
        env=deploy_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise PlatformError(
            f"`prefect deploy --all` failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-2000:]}\n"
            "hint: check prefect.yaml and that `mlre up` reports Prefect healthy."
        )
    return result.stdout


def ensure_platform_automations(settings: Settings) -> list[Any]:
    """The retrain automation (drift or degradation event -> ml-pipeline run), the one that
    crashes zombie flow runs (no heartbeat), then one per remediation (alert -> remediate/...);
    names and windows in flows.automations."""
    from flows.automations import ensure_automations, ensure_remediation_automations

    return [
        *ensure_automations(model_name=settings.model_name, heartbeat_s=settings.flow_heartbeat_s),
        *ensure_remediation_automations(),
    ]


def ensure_worker(settings: Settings, pool: str = k8s_labels.LOCAL_WORK_POOL) -> bool:
    """Start `prefect worker start --pool <pool>` unless ours is running; True when started."""
    if local_platform.is_running(settings, WORKER):
        return False
    prefect = str(local_platform.venv_bin() / "prefect")
    local_platform.start_process(
        settings,
        WORKER,
        [prefect, "worker", "start", "--pool", pool, "--type", "process"],
        env=deploy_env(settings),
    )
    return True


@dataclass(frozen=True)
class RunProgress:
    """A flow run's state and the subflows that have finished so far."""

    state: str
    finished_subflows: list[tuple[str, str]]


def trigger(deployment: str, parameters: dict[str, Any] | None = None) -> Any:
    """Create a flow run of `flow-name/deployment-name`; returns it without waiting."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    if deployment.count("/") != 1 or "" in deployment.split("/"):
        raise PlatformError(
            f"deployment {deployment!r} is not of the form FLOW/DEPLOYMENT "
            "(e.g. ml-pipeline/weekly); `prefect deployment ls` lists them."
        )
    try:
        return run_deployment(deployment, parameters=parameters or {}, timeout=0)
    except ObjectNotFound as exc:
        raise PlatformError(
            f"deployment {deployment!r} does not exist on this Prefect server; known: "
            f"{', '.join(deployment_names()) or 'none'}. Run `mlre deploy` first."
        ) from exc


def progress(flow_run_id: Any) -> RunProgress:
    """The run's state and its finished subflows (name, state), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        done = sorted(
            (c for c in children if c.state_type and c.state_type.value in TERMINAL),
            key=lambda c: c.end_time or c.expected_start_time,
        )
        names = {c.flow_id: client.read_flow(c.flow_id).name for c in done}
    return RunProgress(
        state=run.state_type.value if run.state_type else "PENDING",
        finished_subflows=[(names[c.flow_id], c.state_type.value) for c in done],
    )


def follow(
    flow_run_id: Any, echo: Callable[[str], None], timeout_s: float = 1800, poll_s: float = 2.0
) -> str:
    """Print state changes and finished subflows until the run ends; its final state."""
    seen: set[tuple[str, str]] = set()
    last_state = [""]

    def finished() -> str | None:
        now = progress(flow_run_id)
        for item in now.finished_subflows:
            if item not in seen:
                seen.add(item)
                echo(f"  finished {item[0]}: {item[1].lower()}")
        if now.state != last_state[0]:
            echo(f"  run is {now.state.lower()}")
            last_state[0] = now.state
        return now.state if now.state in TERMINAL else None

    try:
        return wait_until(finished, timeout_s=timeout_s, what="flow run", interval_s=poll_s)
    except WaitTimeout as exc:
        raise PlatformError(
            f"flow run {flow_run_id} did not finish within {timeout_s:.0f} s; see the Prefect "
            "UI and the worker log (.mlre/logs/worker-local.log)."
        ) from exc
