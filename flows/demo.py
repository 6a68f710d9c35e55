"""What `mlre demo` runs on the local platform (the ml-pipeline deployment, through the worker),
and the summary it prints."""

from __future__ import annotations

import json
from collections.abc import Callable

from mlre import registry
from mlre.errors import PlatformError
from mlre.settings import Settings

PIPELINE_DEPLOYMENT = "ml-pipeline/weekly"


def flow_run_url(settings: Settings, flow_run_id: object) -> str:
    """The Prefect UI page of a flow run."""
    return f"{settings.prefect_ui_url}/runs/flow-run/{flow_run_id}"


def model_url(settings: Settings, version: str | None = None) -> str:
    """The MLflow UI page of the registered model (or one of its versions)."""
    base = f"{settings.mlflow_tracking_uri}/#/models/{settings.model_name}"
    return f"{base}/versions/{version}" if version else base


def gate_reasons(tag: str) -> list[str]:
    """The gate's reasons from the version tag (a JSON list, or ' | '-joined text)."""
    try:
        reasons = json.loads(tag)
    except ValueError:
        reasons = tag.split(" | ")
    return [str(r).strip() for r in reasons if str(r).strip()]


def registry_summary(settings: Settings) -> list[str]:
    """The newest version's gate decision and where the aliases point, read from MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri)
    name = settings.model_name
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        return [f"model {name}: no version registered (see the run's logs)"]
    newest = max(versions, key=lambda v: int(v.version))
    champion = registry.champion_version(client, name)
    passed = newest.tags.get("gate.passed") == "true"
    promoted = champion is not None and champion.version == newest.version
    verdict = (
        "PROMOTED to champion"
        if promoted
        else "passed the gate (challenger)"
        if passed
        else "REFUSED (champion unchanged)"
    )
    history = registry.history(client, name)
    judged = (
        next((r.from_version for r in reversed(history) if r.to_version == newest.version), None)
        if promoted
        else (champion.version if champion else None)
    )
    reasons = gate_reasons(newest.tags.get("gate.reasons", ""))
    return [
        f"model {name} version {newest.version}: {verdict}",
        f"  judged against champion: {judged or '(none: first model)'}",
        *(f"  - {reason}" for reason in reasons[:6]),
        f"champion now: version {champion.version if champion else '(none)'}",
    ]


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> list[str]:
    """Trigger the pipeline deployment, follow it through the worker, summarise from MLflow."""
    from flows import deploy

    echo(
        f"triggering {PIPELINE_DEPLOYMENT}: materialize -> consistency -> train -> evaluate -> "
        "promote -> batch inference (run by the local worker)"
    )
    flow_run = deploy.trigger(PIPELINE_DEPLOYMENT)
    url = flow_run_url(settings, flow_run.id)
    echo(f"  watch it live: {url}")
    state = deploy.follow(flow_run.id, echo)
    if state != "COMPLETED":
        raise PlatformError(
            f"{PIPELINE_DEPLOYMENT} ended {state.lower()}: open {url} for the failed task and its "
            "logs (worker log: .mlre/logs/worker-local.log)."
        )
    return [
        *registry_summary(settings),
        "",
        f"Prefect UI (this run, its subflows and artifacts): {url}",
        f"MLflow UI (the registered model and its aliases):  {model_url(settings)}",
        "Run `make demo` again to train a challenger against this champion; `make down` stops.",
    ]
