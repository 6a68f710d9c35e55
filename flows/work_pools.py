"""Base job templates for the Kubernetes work pools: Prefect's default plus placement and identity.

prefect-kubernetes' default template knows nothing about node pools (Prefect issue 19779): a flow
run on `k8s-gpu` would get no GPU, no toleration for the GPU taint and no nodeSelector, so it
would sit Pending on the CPU nodes. This module starts from the installed default (so fields the
worker relies on stay as the worker expects them) and adds only what our cluster needs, reading
labels, taints, pool names and the service account from `mlre.k8s_labels`, the same constants the
Pulumi program labels and taints the node pools with.

Regenerate the committed templates after changing this file or upgrading prefect-kubernetes:
`python -m flows.work_pools deploy/work-pools`.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlre import k8s_labels
from mlre.errors import ConfigError
from mlre.settings import Settings

KUBERNETES_POOLS = (k8s_labels.CPU_WORK_POOL, k8s_labels.GPU_WORK_POOL)

# The flows image's non-root user (Dockerfile `USER 10001`); pinned here too so a pod never
# falls back to root if someone points a deployment at an image without a USER.
FLOW_JOB_UID = 10001

# Finished Jobs (and their pods' logs) stay inspectable for an hour, then Kubernetes removes them;
# Prefect's default keeps them forever, and a retrain schedule fills etcd with dead Jobs.
FINISHED_JOB_TTL_SECONDS = 3600
GPU_LIMIT_VARIABLE = "gpu_limit"

# How long the worker waits for the flow pod to start before it marks the run Crashed (Prefect's
# default: 60 s). A GPU node scales from zero (~3-5 min) and then pulls the ~1 GB CUDA image, so
# the GPU pool allows 15 minutes (Prefect issue 12071); CPU nodes are usually up, 5 minutes.
POD_WATCH_TIMEOUT_SECONDS: dict[str, int] = {
    k8s_labels.CPU_WORK_POOL: 300,
    k8s_labels.GPU_WORK_POOL: 900,
}

# Sized to fit the smallest node of each pool next to its daemonsets (CPU pool: system nodes;
# GPU pool: g5.xlarge, 4 vCPU / 16 GiB). Memory request == limit, as for the platform services:
# no OOM kill because a neighbour burst. No CPU limit by default: throttling only slows jobs down.
POOL_RESOURCES: dict[str, dict[str, str | None]] = {
    k8s_labels.CPU_WORK_POOL: {
        "cpu_request": "500m",
        "cpu_limit": None,
        "memory_request": "2Gi",
        "memory_limit": "2Gi",
    },
    k8s_labels.GPU_WORK_POOL: {
        "cpu_request": "2",
        "cpu_limit": None,
        "memory_request": "8Gi",
        "memory_limit": "8Gi",
    },
}

# prefect-kubernetes 0.8 puts these Job fields in the *pod* spec and its validator refuses a
# template without them there; the API server drops them (unknown fields only warn by default).
PREFECT_POD_SPEC_EXTRAS = ("parallelism", "completions")


@lru_cache(maxsize=1)
def _prefect_default() -> str:
    """What `prefect work-pool get-default-base-job-template --type kubernetes` prints."""
    # Imported here: prefect is heavy and infra code may import this module's constants.
    from prefect_kubernetes.worker import KubernetesWorker

    return json.dumps(KubernetesWorker.get_default_base_job_template())


def default_base_job_template() -> dict[str, Any]:
    """A fresh copy of prefect-kubernetes' default Kubernetes base job template."""
    return json.loads(_prefect_default())


def node_selector(pool: str) -> dict[str, str]:
    """nodeSelector that lands a pool's flow pods on that node pool."""
    if pool == k8s_labels.GPU_WORK_POOL:
        return k8s_labels.gpu_node_selector()
    return {k8s_labels.POOL_LABEL_KEY: k8s_labels.CPU_POOL_LABEL_VALUE}


def pod_security_context() -> dict[str, Any]:
    """Pod securityContext: the image's fixed non-root uid (namespace enforces 'baseline')."""
    return {
        "runAsNonRoot": True,
        "runAsUser": FLOW_JOB_UID,
        "runAsGroup": FLOW_JOB_UID,
        "fsGroup": FLOW_JOB_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container securityContext: no privilege escalation, no Linux capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def gpu_limit_variable() -> dict[str, Any]:
    """Job variable schema for the number of GPUs a flow run's container gets."""
    return {
        "title": "GPUs",
        "type": "integer",
        "minimum": 1,
        "default": 1,
        "description": (
            f"Number of GPUs ({k8s_labels.GPU_RESOURCE}) for the flow-run container. The pod "
            "waits (and cluster-autoscaler adds a node) until a GPU node has this many free."
        ),
    }


def placeholder(variable: str) -> str:
    """A Prefect job-variable placeholder; a lone one is replaced by the value, type and all."""
    return "{{ " + variable + " }}"


def _set_default(variables: dict[str, Any], name: str, value: Any) -> None:
    """Give an existing Prefect variable our default, keeping its type and description."""
    variables["properties"][name]["default"] = value


def flow_pod_env() -> dict[str, str]:
    """Environment every flow pod gets by default: the heartbeat period the zombie automation
    counts on (Settings' default, not this machine's MLRE_* values)."""
    return Settings.model_construct().flow_run_env()


def pod_identity_env(pool: str) -> list[dict[str, Any]]:
    """Container env entries naming the node (downward API) and the work pool of a flow pod."""
    return [
        {
            "name": k8s_labels.NODE_NAME_ENV,
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
        },
        {"name": k8s_labels.WORK_POOL_ENV, "value": pool},
    ]


def _add_variables(template: dict[str, Any], pool: str) -> None:
    """Defaults for identity, cleanup, sizing and env; the GPU count as a variable of its own."""
    variables = template["variables"]
    # A deployment that sets `env` replaces this dict: it must carry the heartbeat too.
    _set_default(variables, "env", flow_pod_env())
    _set_default(variables, "namespace", k8s_labels.FLOWS_NAMESPACE)
    # The IRSA-annotated account: flow jobs reach S3 with its role, never with node credentials.
    _set_default(variables, "service_account_name", k8s_labels.FLOWS_SERVICE_ACCOUNT)
    _set_default(variables, "finished_job_ttl", FINISHED_JOB_TTL_SECONDS)
    _set_default(variables, "pod_watch_timeout_seconds", POD_WATCH_TIMEOUT_SECONDS[pool])
    for name, value in POOL_RESOURCES[pool].items():
        _set_default(variables, name, value)
    if pool == k8s_labels.GPU_WORK_POOL:
        variables["properties"][GPU_LIMIT_VARIABLE] = gpu_limit_variable()


def _place_pods(template: dict[str, Any], pool: str) -> None:
    """Node pool placement, GPU toleration and limit, security contexts in the Job manifest."""
    pod_spec = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod_spec["nodeSelector"] = node_selector(pool)
    pod_spec["securityContext"] = pod_security_context()
    container = pod_spec["containers"][0]
    container["securityContext"] = container_security_context()
    # A list, not the `{{ env }}` dict: a downward-API entry needs `valueFrom`, which the `env`
    # variable (name -> string) cannot hold. The worker puts the `env` variable's entries in
    # front of this list and keeps these, so a deployment that sets `env` cannot drop them.
    container["env"] = pod_identity_env(pool)
    _use_database_access(pod_spec, container)
    if pool == k8s_labels.GPU_WORK_POOL:
        pod_spec["tolerations"] = [k8s_labels.gpu_toleration()]
        # Limit only: for extended resources Kubernetes sets the request equal to the limit.
        container["resources"]["limits"][k8s_labels.GPU_RESOURCE] = placeholder(GPU_LIMIT_VARIABLE)


def _use_database_access(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    """The flows' Feast registry URL from the stack's Secret, the Dask worker defaults from the
    stack's ConfigMap, and the RDS CA bundle the registry URL's `sslrootcert` names. All optional:
    a cluster without the stack's objects still runs pods."""
    container["envFrom"] = [
        {"secretRef": {"name": k8s_labels.FLOWS_DB_SECRET, "optional": True}},
        # The Dask worker defaults of infra/dask_operator.py; a deployment's `env` overrides them.
        {"configMapRef": {"name": k8s_labels.FLOWS_DASK_CONFIG_MAP, "optional": True}},
        # MLRE_RESULTS_URI: the flow-results bucket resumable steps persist to (flows/resume.py).
        {"configMapRef": {"name": k8s_labels.FLOWS_RESULTS_CONFIG_MAP, "optional": True}},
    ]
    volume = {"name": "rds-ca", "mountPath": k8s_labels.RDS_CA_DIR, "readOnly": True}
    container["volumeMounts"] = [*container.get("volumeMounts", []), volume]
    pod_spec["volumes"] = [
        *pod_spec.get("volumes", []),
        {"name": "rds-ca", "configMap": {"name": k8s_labels.RDS_CA_CONFIG_MAP, "optional": True}},
    ]


def base_job_template(pool: str) -> dict[str, Any]:
    """The base job template for one Kubernetes work pool (`k8s-cpu` or `k8s-gpu`)."""
    if pool not in KUBERNETES_POOLS:
        raise ConfigError(
            f"No Kubernetes base job template for work pool {pool!r}: "
            f"use one of {', '.join(KUBERNETES_POOLS)}."
        )
    template = default_base_job_template()
    _add_variables(template, pool)
    _place_pods(template, pool)
    return template


def variable_defaults(template: dict[str, Any]) -> dict[str, Any]:
    """Variable defaults as the worker uses them: a None default means 'leave the key out'."""
    properties = template["variables"].get("properties", {})
    return {
        name: spec["default"]
        for name, spec in properties.items()
        if spec.get("default") is not None
    }


def render_job_manifest(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest a worker builds from a base template and a deployment's job variables."""
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    unknown = sorted(set(values) - set(template["variables"].get("properties", {})))
    if unknown:
        # Prefect would reject these when deploying; failing here names them instead.
        raise ConfigError(
            f"Unknown job variable(s) {', '.join(unknown)}: the template declares "
            f"{', '.join(sorted(template['variables']['properties']))}."
        )
    merged = {**variable_defaults(template), **values}
    configuration = apply_values(copy.deepcopy(template["job_configuration"]), merged)
    # The worker's own model (it validates the manifest) and its own merge of the `env`
    # variable into the container's env list, as `prepare_for_flow_run` does for each run.
    job = KubernetesWorkerJobConfiguration(**configuration)
    job._populate_env_in_manifest()
    return job.job_manifest


def api_server_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The Job as the API server stores it: without the pod-level fields it drops."""
    stored = copy.deepcopy(manifest)
    pod_spec = stored["spec"]["template"]["spec"]
    for key in PREFECT_POD_SPEC_EXTRAS:
        pod_spec.pop(key, None)
    return stored


def template_json(pool: str) -> str:
    """A pool's template serialised exactly as committed under deploy/work-pools."""
    return json.dumps(base_job_template(pool), indent=2, sort_keys=True) + "\n"


def write_templates(folder: str | Path) -> list[Path]:
    """Write `<pool>.json` for every Kubernetes work pool into `folder`."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for pool in KUBERNETES_POOLS:
        path = target / f"{pool}.json"
        path.write_text(template_json(pool))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """`python -m flows.work_pools FOLDER`: regenerate the committed templates."""
    if len(argv) != 1:
        print("usage: python -m flows.work_pools FOLDER", file=sys.stderr)
        return 2
    for path in write_templates(argv[0]):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
