#!/usr/bin/env bash
# Issue 16's GPU check on a lent GPU machine (the session's `device` tool): a one-round smoke fit on
# the CUDA device, then `python -m bench.gpu_training --require-gpu` at 5M rows (CPU on all the
# machine's cores vs CUDA). About 5-6 minutes there; results and logs land in $OUT.
#
# The machine has no registry and no project venv (its python3 is 3.12 with numpy, pandas,
# pyarrow, scikit-learn, scipy and psutil, but no xgboost), and a call carries at most 64 MiB,
# while the CUDA wheel xgboost==3.2.0 is 132 MB (its files as tar.xz: ~97 MB). So it travels in
# two parts, over two calls on the same warm machine (it is given back ~30 s after a call):
#
#   here:          bash bench/gpu_device_check.sh pack      # ~2 min: download, xz, split in two
#   device call 1: carry [".mlre/gpu-carry/a"]  command: bash bench/gpu_device_check.sh stage
#   device call 2: carry [".mlre/gpu-carry/b"]  command: bash bench/gpu_device_check.sh run
#                  (at once after call 1, timeout_s 540)
#
# Where a CUDA xgboost is already importable (the GPU image), `run` alone is enough.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARRY=.mlre/gpu-carry
STAGE=.mlre/gpu-stage
SITE=.mlre/gpu-site
WHEEL_SPEC="xgboost==3.2.0"
OUT="${OUT:-$ROOT/.mlre/gpu-check-out}"
export TMPDIR="$ROOT/.mlre/tmp" PYTHONUNBUFFERED=1
mkdir -p "$TMPDIR" "$OUT"

say() { echo "[gpu_device_check] $*"; }

pack() {
  # The project's venv pip on this (CPU) machine; the wheel is py3-none, any CPython works.
  local py="${PACK_PYTHON:-$ROOT/.venv/bin/python}" work="$TMPDIR/gpu-wheel"
  rm -rf "$CARRY" "$work" && mkdir -p "$CARRY/a" "$CARRY/b" "$work/tree"
  "$py" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    -d "$work" "$WHEEL_SPEC"
  local wheel
  wheel="$(basename "$(ls "$work"/xgboost-*.whl)")"
  # The wheel is already deflated (132 MB) and xz gains little on it; the unpacked tree (a
  # 237 MB libxgboost.so) xz-compresses to ~97 MB, two parts that each fit a call.
  say "unpacking and compressing $wheel ($(du -m "$work/$wheel" | cut -f1) MB) ..."
  "$py" -m zipfile -e "$work/$wheel" "$work/tree"
  tar -C "$work/tree" -cf - . | xz -T0 -6 >"$work/tree.tar.xz"
  split -n 2 -d "$work/tree.tar.xz" "$work/part-"
  mv "$work/part-00" "$CARRY/a/part-a"
  mv "$work/part-01" "$CARRY/b/part-b"
  echo "$wheel" >"$CARRY/a/wheel.name"
  (cd "$work" && sha256sum tree.tar.xz) >"$CARRY/a/tree.sha256"
  rm -rf "$work"
  du -m "$CARRY"/a/part-a "$CARRY"/b/part-b
  say "packed: carry $CARRY/a in the first device call, $CARRY/b in the second"
}

stage() {
  [[ -f "$CARRY/a/part-a" ]] || { say "no $CARRY/a/part-a: carry $CARRY/a"; exit 2; }
  mkdir -p "$STAGE" && cp "$CARRY"/a/* "$STAGE"/
  say "staged $(du -m "$STAGE/part-a" | cut -f1) MB; now call 'run' carrying $CARRY/b"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
}

python_bin() {
  # $PYTHON if given, else the machine's python3 (the one with numpy/pandas/scikit-learn).
  echo "${PYTHON:-python3}"
}

has_cuda_xgboost() {
  "$1" -c 'import sys, xgboost; sys.exit(0 if xgboost.build_info().get("USE_CUDA") else 1)' \
    2>/dev/null
}

install_wheel() {
  local a="$STAGE"
  [[ -f "$a/part-a" ]] || a="$CARRY/a"
  [[ -f "$a/part-a" && -f "$CARRY/b/part-b" ]] || {
    say "wheel parts missing (part-a in $STAGE or $CARRY/a, part-b in $CARRY/b): run 'stage' first"
    exit 2
  }
  cat "$a/part-a" "$CARRY/b/part-b" >"$TMPDIR/tree.tar.xz"
  (cd "$TMPDIR" && sha256sum -c "$ROOT/$a/tree.sha256")
  # What `pip install --no-deps --target` would leave: the wheel's files unpacked. The
  # dependency nvidia-nccl-cu12 is left out on purpose: NCCL is dlopened only for multi-GPU work.
  rm -rf "$SITE" && mkdir -p "$SITE"
  xz -d -c "$TMPDIR/tree.tar.xz" | tar -C "$SITE" -xf -
  rm -f "$TMPDIR/tree.tar.xz"
  say "unpacked $(cat "$a/wheel.name") into $SITE"
}

run() {
  local py
  py="$(python_bin)"
  export PYTHONPATH="$ROOT/$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  if ! has_cuda_xgboost "$py"; then
    say "installing the CUDA wheel into $SITE ..."
    install_wheel
  fi
  has_cuda_xgboost "$py" || { say "xgboost still has no CUDA build"; exit 3; }
  nvidia-smi | tee "$OUT/nvidia-smi.txt" || true
  "$py" -c 'import sys, xgboost; print(sys.version, xgboost.__version__, xgboost.build_info())' \
    | tee "$OUT/versions.txt"
  say "smoke: one boosting round on the CUDA device ..."
  timeout 120 "$py" -m bench.gpu_training --smoke 2>&1 | tee "$OUT/smoke.log"
  say "benchmark at ${ROWS:-5000000} rows ..."
  local status=0
  timeout "${BENCH_TIMEOUT_S:-420}" "$py" -m bench.gpu_training --require-gpu \
    --rows "${ROWS:-5000000}" 2>&1 | tee "$OUT/bench.log" || status=$?
  cp bench/results/gpu_training.json "$OUT/" 2>/dev/null || true
  exit "$status"
}

case "${1:-run}" in
  pack) pack ;;
  stage) stage ;;
  run) run ;;
  *) echo "usage: $0 pack|stage|run" >&2; exit 64 ;;
esac
