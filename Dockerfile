# syntax=docker/dockerfile:1
# The flows image for the k8s-cpu and k8s-gpu work pools: the locked runtime packages, the flows,
# the core package and the feature repo; no compiler, no tests, no infra code. From the repo root:
#   TAG=$(git rev-parse --short HEAD)
#   docker build -t "$MLRE_IMAGE_REPO:$TAG" .
#   docker build --build-arg XGBOOST_WHEEL=xgboost -t "$MLRE_IMAGE_REPO:$TAG-gpu" .
# The first is the CPU image (xgboost-cpu, as in the lock); the second the GPU image for the
# k8s-gpu pool, whose xgboost is the CUDA build (see XGBOOST_WHEEL below).
#
# The base is pinned by digest (the tag is kept for humans): a tag moves when Debian patches land,
# the digest names exactly the bytes we built and tested on. It is the multi-arch index digest of
# the tag, so each platform still gets its own image. To move to a newer base, resolve the new
# tag's digest (`docker buildx imagetools inspect python:<tag>` or `crane digest python:<tag>`) and
# change BOTH stages: the venv's interpreter is a symlink to /usr/local/bin/python.
# No CUDA base image: on the AL2023 NVIDIA AMI nodes the driver comes from the host (the NVIDIA
# container toolkit and device plugin mount it into GPU pods) and the CUDA user-space from the
# wheels (xgboost's CUDA build needs only the driver, plus NCCL from nvidia-nccl-cu12).

# Which distribution provides the `xgboost` module (one default for both stages, see below).
ARG XGBOOST_WHEEL=xgboost-cpu

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src

# pip freeze leaves pip and setuptools out of constraints.txt: pin the build tools here, and
# build the package without isolation below so nothing unpinned is fetched to build it.
COPY constraints.txt ./
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -c constraints.txt pip==26.3 setuptools==84.2.1

COPY pyproject.toml README.md ./
COPY mlre/ mlre/
COPY flows/ flows/
COPY serving/ serving/
COPY relay/ relay/
COPY cli/ cli/
# The lock decides every version: `.` brings only the runtime dependencies (no infra, no dev extras).
# Wheels only: the slim base has no compiler, and an sdist build would be an unlocked toolchain.
RUN pip install --no-cache-dir --no-build-isolation --only-binary=:all: -c constraints.txt .

# Which distribution provides the `xgboost` module. Both do, from the same files: never install
# both. Used only after the install above, so the CPU and GPU builds share that layer.
#   xgboost-cpu (default): CPU-only, 5.6 MB wheel, from the lock (pyproject depends on it).
#   xgboost: the CUDA build, 131.7 MB wheel plus nvidia-nccl-cu12. Not in constraints.txt (the
#     lock is the CPU install), so pinned here: same version as the lock's xgboost-cpu (the image
#     test checks it), NCCL at the newest release on the index when this was written.
# Uninstall first: installing xgboost next to xgboost-cpu and then removing xgboost-cpu would
# delete the files both own.
ARG XGBOOST_WHEEL
RUN case "$XGBOOST_WHEEL" in \
      xgboost-cpu) ;; \
      xgboost) pip uninstall --yes xgboost-cpu \
        && pip install --no-cache-dir --only-binary=:all: -c constraints.txt \
          xgboost==3.2.0 nvidia-nccl-cu12==2.32.3 ;; \
      *) echo "XGBOOST_WHEEL must be xgboost-cpu or xgboost, not '$XGBOOST_WHEEL'" >&2; exit 1 ;; \
    esac

# Fail the build, not a scheduled run hours later, when a flow cannot import in this venv or the
# xgboost build is not the one asked for (image_check reads MLRE_XGBOOST_WHEEL).
ENV MLRE_XGBOOST_WHEEL=$XGBOOST_WHEEL
COPY deploy/image_check.py deploy/
RUN python deploy/image_check.py


FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS runtime
ARG XGBOOST_WHEEL

# A fixed, numeric non-root uid/gid: Kubernetes can only verify runAsNonRoot for a numeric USER,
# and the work pools' securityContext (flows/work_pools.py) runs pods as this same uid.
RUN groupadd --system --gid 10001 mlre \
    && useradd --system --no-log-init --uid 10001 --gid mlre --create-home --home-dir /home/mlre \
        --shell /usr/sbin/nologin mlre

# Runtime state goes under /tmp (an emptyDir in the pod), never into the image's code folder.
# Telemetry off for `prefect flow-run execute` too: flow pods have no `mlre` entry point to
# export it (Settings.runtime_env), and tasks never write the process environment.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/mlre \
    MLRE_HOME=/tmp/mlre \
    PREFECT_HOME=/tmp/prefect \
    MPLCONFIGDIR=/tmp/matplotlib \
    DO_NOT_TRACK=1 \
    MLFLOW_ENABLE_TELEMETRY=false \
    FEAST_USAGE=False \
    MLRE_XGBOOST_WHEEL=$XGBOOST_WHEEL
# PYTHONPATH: `mlre` resolves to /opt/mlre (next to feature_repo/), not to the venv's copy.
WORKDIR /opt/mlre

COPY --from=builder /opt/venv /opt/venv
COPY feature_repo/ feature_repo/
# The SLO specs: the error-budget policy and slo-report read them at run time.
COPY slos/ slos/
COPY mlre/ mlre/
COPY flows/ flows/
COPY serving/ serving/
COPY relay/ relay/
COPY cli/ cli/
COPY deploy/image_check.py deploy/

USER 10001:10001

# CMD, not ENTRYPOINT: the Kubernetes worker sets the container's args per flow run
# (`prefect flow-run execute`), which replace CMD but would be appended to an ENTRYPOINT.
CMD ["python", "deploy/image_check.py"]
