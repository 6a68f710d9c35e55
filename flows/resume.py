"""Resumable steps: a task whose result is persisted under a key of the run it belongs to, so a
retry of that run reads what its earlier attempts finished instead of doing it again.

What resumes. A flow run that crashed (its pod was evicted, its node lost) or failed, run again:
- in place: the Prefect UI's Retry, `prefect flow-run retry <id>`, or the flow's own `retries`.
  The run keeps its id;
- as a new run of its deployment that carries the tag `mlre-resumes:<id>`: what the self-healing
  loop's `rerun-crashed` remediation starts (flows/remediation.py).

Each resumable task's key is the run's *scope* (the root flow run's id, or the id its tag names:
a retried `ml-pipeline` gets new subflow runs whose tasks must find the first attempt's results),
the task's name and the inputs that define the step. A finished step is read back (state
`Cached`); a missing one runs.

What does not. Any other new run never reuses another run's results: a wiped online store would
stay empty and a model would not be retrained on data that changed. Results live under
`Settings.results_root` (`<home>/results` locally, `s3://...` in the cloud, where a pod's disk
dies with the pod), one folder per scope, so an operator can delete a run's folder to make its
retry start over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.filesystems import RemoteFileSystem
from pydantic import BaseModel

from mlre.settings import get_settings

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.context import TaskRunContext

T = TypeVar("T", bound=Task[Any, Any])


def _plain(value: Any) -> Any:
    """JSON for the values steps are keyed by: parameter models, dataclasses, datetimes."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot key a resumable step by a {type(value).__name__}")


def step_key(scope: str, task_name: str, inputs: Mapping[str, Any]) -> str:
    """`<scope>/<task name>-<digest of the inputs>`: a path under the results root."""
    text = json.dumps(dict(inputs), default=_plain, sort_keys=True)
    return f"{scope}/{task_name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


RESUMES_TAG = "mlre-resumes:"


def resume_tag(scope: str) -> str:
    """The tag that makes a new flow run resume the runs of `scope` (see `run_scope`)."""
    return f"{RESUMES_TAG}{scope}"


def scope_of(run_id: str, tags: Iterable[str]) -> str:
    """A root run's scope: the scope its `mlre-resumes:` tag names, else its own id."""
    named = [tag.removeprefix(RESUMES_TAG) for tag in tags if tag.startswith(RESUMES_TAG)]
    return named[0] if named else run_id


@lru_cache(maxsize=256)
def run_scope(flow_run_id: UUID) -> str:
    """The scope the results of `flow_run_id`'s tasks are kept under: of its root flow run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        while run.parent_task_run_id is not None:
            parent = client.read_task_run(run.parent_task_run_id)
            if parent.flow_run_id is None:
                break
            run = client.read_flow_run(parent.flow_run_id)
        return scope_of(str(run.id), run.tags or [])


@dataclass
class RunScoped(CachePolicy):
    """Cache key: the run's scope, the task's name and the named inputs (others ignored:
    staging paths, frames the keyed inputs already determine)."""

    inputs: tuple[str, ...] = ()

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        flow_run_id = task_ctx.task_run.flow_run_id
        if flow_run_id is None:  # called outside a flow run: nothing to resume
            return None
        missing = [name for name in self.inputs if name not in inputs]
        if missing:
            raise ValueError(f"task {task_ctx.task.name!r} has no inputs {missing} to key by")
        keyed = {name: inputs[name] for name in self.inputs}
        return step_key(run_scope(flow_run_id), task_ctx.task.name, keyed)


def result_storage(root: str) -> Path | str:
    """Prefect result storage for the results root: a local folder as is; a URI (s3://...) as
    a `remote-file-system` block saved on the server (Prefect requires it for remote storage),
    named after the URI so every process of every run finds the same one."""
    if "://" not in root:
        return Path(root)
    return _saved_remote_storage(root.rstrip("/"))


@lru_cache(maxsize=8)
def _saved_remote_storage(uri: str) -> str:
    name = f"mlre-results-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    RemoteFileSystem(basepath=uri).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def forget(root: str, scope: str, task_name: str) -> int:
    """Delete the persisted results of one task in one scope (local folder or URI); returns
    how many there were. A later retry of that scope runs the task again."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(root.rstrip("/"))
    found = fs.glob(f"{base}/{scope}/{task_name}-*")
    if found:
        fs.rm(found)
    return len(found)


def resumable(task: T, *inputs: str) -> T:
    """`task` with its result persisted and keyed by the run's scope and `inputs` (by name).
    Applied when the flow runs, so the settings' results root is read then, never at import."""
    return task.with_options(
        cache_policy=RunScoped(inputs=inputs),
        persist_result=True,
        result_storage=result_storage(get_settings().results_root),
    )
