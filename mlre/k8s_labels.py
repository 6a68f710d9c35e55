"""Kubernetes node labels and taints shared by the Pulumi program and the Prefect GPU job template.

This module is the single source of truth: `infra/` reads it to label and taint the node pools and
`flows/deploy` reads it to render the GPU work pool's job template, so the two cannot drift apart.
It must stay dependency-free (no third-party imports) because both sides import it.
"""

from __future__ import annotations

# Label every node pool carries so workloads can select it.
POOL_LABEL_KEY = "mlre.io/pool"
CPU_POOL_LABEL_VALUE = "cpu"
GPU_POOL_LABEL_VALUE = "gpu"

# Extended resource advertised by the NVIDIA device plugin; also the taint key on GPU nodes.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "present"
GPU_TAINT_EFFECT = "NoSchedule"

# Prefect work pools the flows deploy to.
LOCAL_WORK_POOL = "local"
CPU_WORK_POOL = "k8s-cpu"
GPU_WORK_POOL = "k8s-gpu"

# Kubernetes namespace and service account the flow jobs run under (IRSA-annotated in the cloud).
FLOWS_NAMESPACE = "mlre-flows"
# The Prometheus job the prediction service's series carry, locally and in the cluster: the SLO
# rules (slos/serving.yaml) select it by this name.
SERVING_SCRAPE_JOB = "mlre-serving"
FLOWS_SERVICE_ACCOUNT = "mlre-flows"

# Feast roles. In the cloud the feature server runs Feast's Kubernetes auth: a caller's roles are
# the names of the Roles its service account is bound to in the feature server's namespace.
# infra/ creates those Roles and RoleBindings; feature_repo/permissions.py grants by these names.
FEAST_WRITER_ROLE = "feast-writer"  # the flows: read, write, materialize
FEAST_READER_ROLE = "feast-reader"  # the prediction service: online reads only

# What the stack's DatabaseRoles component (infra/db_bootstrap.py) puts in the flows namespace
# and the flow-run job templates use: the Secret with the flows' Feast registry URL (`feast` role,
# envFrom) and the ConfigMap with the RDS CA bundle its `sslrootcert` names.
FLOWS_DB_SECRET = "flows-db"
# ConfigMap in the flows namespace with the Dask worker defaults (MLRE_TASK_RUNNER, MLRE_DASK_*)
# that infra/dask_operator.py writes; every flow-run pod reads it (envFrom, optional).
FLOWS_DASK_CONFIG_MAP = "flows-dask"
# ConfigMap in the flows namespace with MLRE_RESULTS_URI (the flow-results bucket) that
# infra/prefect_worker.py writes; every flow-run pod reads it (envFrom, optional).
FLOWS_RESULTS_CONFIG_MAP = "flows-results"
RDS_CA_CONFIG_MAP = "rds-ca"
RDS_CA_DIR = "/etc/rds-ca"

# Set on every flow pod by the work pools' job templates (flows/work_pools.py) and read through
# Settings (`node_name`, `work_pool`): a flow run can name the node and pool it landed on.
NODE_NAME_ENV = "MLRE_NODE_NAME"
WORK_POOL_ENV = "MLRE_WORK_POOL"


def gpu_node_selector() -> dict[str, str]:
    """nodeSelector that lands a pod on a GPU pool node."""
    return {POOL_LABEL_KEY: GPU_POOL_LABEL_VALUE}


def gpu_toleration() -> dict[str, str]:
    """Toleration matching the taint every GPU pool node carries."""
    return {
        "key": GPU_TAINT_KEY,
        "operator": "Equal",
        "value": GPU_TAINT_VALUE,
        "effect": GPU_TAINT_EFFECT,
    }
