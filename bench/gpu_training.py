"""GPU training benchmark (issue 16, part 6): XGBoost `hist` on all CPU cores vs on a CUDA device.

The same data for both sides: `--rows` (default 5,000,000) labelled transactions from the project's
generator (`mlre.data.generator`), turned into 30 float32 features by `build_features` (the
generator's numeric columns, its two categories and the event's hour and weekday as codes, six
fixed transforms and ten seeded mixes), split train/test with a seeded permutation. The data are
made once in a subprocess and cached as .npy files under `.mlre/bench/gpu_training/`.

Each side runs in its own fresh subprocess, so its peak host memory (VmHWM) is its own: a tiny
warm-up fit on the device (for CUDA it is also the probe: XGBoost silently falls back to the CPU
when it sees no GPU, so the booster's effective device is read back), then the timed `fit` with
identical parameters (`device` aside), `predict_proba` on the test rows and ROC AUC.

Without a usable CUDA device (the CPU-only `xgboost-cpu` wheel, or no GPU) the results record the
CPU side and `"gpu": "not available"` with the reason; ratio and `met` stay null. Never a guessed
number.

Run: `python -m bench.gpu_training [--rows N --seed S --require-gpu]` (also part of `make bench`);
results in bench/results/gpu_training.json. `--smoke` runs one boosting round on the CUDA device
and exits non-zero unless it really ran there (bench/gpu_device_check.sh, on a lent GPU machine).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mlre.atomic import atomic_output, write_atomic

if TYPE_CHECKING:
    import pandas as pd

    from mlre.data.generator import GeneratorConfig

Device = Literal["cpu", "cuda"]

# Not mlre.settings: the GPU machine's Python (bench/gpu_device_check.sh) has no pydantic.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = PROJECT_ROOT / "bench" / "results" / "gpu_training.json"
BENCH_ROOT = PROJECT_ROOT / ".mlre" / "bench" / "gpu_training"
TMP_DIR = PROJECT_ROOT / ".mlre" / "tmp"

ROWS = 5_000_000
SEED = 7
TEST_FRACTION = 0.2
# Generator shape: a fixed window, customers scaled with the rows (100k at 5M), and the
# transaction rate solved so the generator writes exactly `rows` labelled transactions.
DAYS = 51
MAX_CUSTOMERS = 100_000
MIN_CUSTOMERS = 50
ROWS_PER_CUSTOMER = 50
N_MIXES = 10
RECIPE_VERSION = 1  # bump when build_features changes: cached data sets are then rebuilt

# Identical on both sides; `device` is the only difference, n_jobs is every usable core.
MODEL_PARAMS: Mapping[str, Any] = {
    "tree_method": "hist",
    "n_estimators": 200,
    "max_depth": 8,
    "learning_rate": 0.1,
    "max_bin": 256,
}
TARGET: Mapping[str, float] = {
    "min_speedup": 5.0,  # CPU fit seconds / CUDA fit seconds, all cores of the same machine
    "max_auc_difference": 0.005,
    "at_rows": 5_000_000,
}
SMOKE_ROWS = 100_000
CHILD_TIMEOUT_S = 3600
RSS_POLL_S = 0.2
NOT_AVAILABLE = "not available"

BASE_COLUMNS: tuple[str, ...] = (
    "amount",
    "txn_count_1d",
    "txn_amount_sum_1d",
    "txn_amount_avg_1d",
    "txn_amount_max_1d",
    "distinct_merchants_1d",
    "night_txn_share_1d",
    "foreign_txn_share_1d",
    "avg_amount_30d",
    "chargeback_count_90d",
)
CODE_COLUMNS: tuple[str, ...] = (
    "merchant_category_code",
    "preferred_channel_code",
    "hour_of_day",
    "day_of_week",
)
TRANSFORM_COLUMNS: tuple[str, ...] = (
    "log1p_amount",
    "amount_to_avg_30d",
    "amount_to_max_1d",
    "log1p_txn_amount_sum_1d",
    "night_x_foreign_share",
    "amount_minus_avg_30d",
)
MIX_COLUMNS: tuple[str, ...] = tuple(f"mix_{i:02d}" for i in range(N_MIXES))
FEATURE_NAMES: tuple[str, ...] = BASE_COLUMNS + CODE_COLUMNS + TRANSFORM_COLUMNS + MIX_COLUMNS

FEATURE_RECIPE = [
    "Source: mlre.data.generator with no drift scenario: generate_daily_stats, "
    "generate_transactions (labels is_fraud from the generator's LabelModel), then "
    "join_daily_features (each transaction's point-in-time daily row). One row per transaction.",
    f"{len(BASE_COLUMNS)} generator numerics as they are: {', '.join(BASE_COLUMNS)}.",
    "4 codes: merchant_category and preferred_channel as their index in the generator's "
    "MERCHANT_CATEGORIES / CHANNELS, the event's UTC hour (0-23) and weekday (Monday=0).",
    "6 fixed transforms: log1p(amount); amount / avg_amount_30d (0 where avg <= 0); amount / "
    "txn_amount_max_1d (0 where max <= 0); log1p(txn_amount_sum_1d); night_txn_share_1d * "
    "foreign_txn_share_1d; amount - avg_amount_30d.",
    f"{N_MIXES} seeded mixes: the 20 columns above standardized (mean 0, std 1 over all rows), "
    f"mix_k = tanh(z @ W[:, k]) with W ~ Normal(0, 1/20), shape (20, {N_MIXES}), drawn from "
    "numpy.random.default_rng([seed, 30]).",
    "All 30 stored as float32 (C order); no missing values (no scenario). Train/test: "
    "numpy.random.default_rng([seed, 31]).permutation(rows), the first "
    f"{TEST_FRACTION:.0%} of it is the test set.",
]

NOTES = [
    "XGBoost does not fail when device='cuda' finds no GPU: it warns ('No visible GPU is "
    "found, setting device to CPU') and trains on the CPU, with the CUDA wheel and with "
    "xgboost-cpu alike (checked with 3.2.0 on a machine without a GPU). So the CUDA side is "
    "probed by a tiny fit whose booster's effective device is read back, and the timed fit's "
    "device is checked again; a fallback is recorded as 'not available', never timed.",
    "The target compares against all cores of the same machine: the ratio depends on that "
    "machine's core count (the 2-core CPU baseline here would flatter any GPU), so compare "
    "ratios only from one machine, CPU and CUDA in the same run.",
    "Timings come from a shared machine (load averages at start and end are recorded); the "
    "data are generated once per (rows, seed, recipe, generator source) and cached, so both "
    "sides fit the very same arrays.",
]


def log(message: str) -> None:
    """One progress line on stdout."""
    print(f"[gpu_training] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Data: the generator's transactions -> 30 float32 features
# --------------------------------------------------------------------------------------------


def generator_config(rows: int, seed: int) -> GeneratorConfig:
    """A generator config whose `transactions` source has exactly `rows` rows."""
    from mlre.data.generator import GeneratorConfig

    if rows < MIN_CUSTOMERS:
        raise ValueError(f"--rows {rows}: need at least {MIN_CUSTOMERS} rows.")
    customers = min(MAX_CUSTOMERS, max(MIN_CUSTOMERS, rows // ROWS_PER_CUSTOMER))
    rate = rows / (customers * (DAYS - 1))
    return GeneratorConfig(
        n_customers=customers, days=DAYS, seed=seed, transactions_per_customer_day=rate
    )


def generate_frame(rows: int, seed: int) -> pd.DataFrame:
    """Labelled transactions joined with their point-in-time daily features."""
    from mlre.data import generator as gen

    cfg = generator_config(rows, seed)
    daily = gen.generate_daily_stats(cfg)
    transactions = gen.generate_transactions(cfg, daily)
    frame = gen.join_daily_features(transactions, daily)
    if len(frame) != rows:  # the rate is solved for exactly `rows`; rounding must not move it
        raise RuntimeError(f"generator wrote {len(frame)} transactions, expected {rows}")
    return frame


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def build_features(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """The (rows, 30) float32 matrix of FEATURE_NAMES, as FEATURE_RECIPE describes."""
    from mlre.data.generator import CHANNELS, MERCHANT_CATEGORIES, TIMESTAMP_COLUMN

    n = len(frame)
    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)

    def col(name: str) -> np.ndarray:
        return frame[name].to_numpy(dtype=np.float64)

    for j, name in enumerate(BASE_COLUMNS):
        out[:, j] = col(name)
    j = len(BASE_COLUMNS)
    merchant = frame["merchant_category"].map({c: i for i, c in enumerate(MERCHANT_CATEGORIES)})
    channel = frame["preferred_channel"].map({c: i for i, c in enumerate(CHANNELS)})
    if merchant.isna().any() or channel.isna().any():
        raise ValueError("build_features: a merchant_category or preferred_channel is unknown")
    stamp = frame[TIMESTAMP_COLUMN].dt.tz_convert("UTC")
    out[:, j] = merchant.to_numpy(dtype=np.float64)
    out[:, j + 1] = channel.to_numpy(dtype=np.float64)
    out[:, j + 2] = stamp.dt.hour.to_numpy(dtype=np.float64)
    out[:, j + 3] = stamp.dt.dayofweek.to_numpy(dtype=np.float64)
    j += len(CODE_COLUMNS)
    amount, avg30 = col("amount"), col("avg_amount_30d")
    out[:, j] = np.log1p(amount)
    out[:, j + 1] = _ratio(amount, avg30)
    out[:, j + 2] = _ratio(amount, col("txn_amount_max_1d"))
    out[:, j + 3] = np.log1p(col("txn_amount_sum_1d"))
    out[:, j + 4] = col("night_txn_share_1d") * col("foreign_txn_share_1d")
    out[:, j + 5] = amount - avg30
    j += len(TRANSFORM_COLUMNS)
    # Standardize in float64 column by column (a float32 sum over 5M rows drifts), mix in float32.
    z = np.empty((n, j), dtype=np.float32)
    for k in range(j):
        values = out[:, k].astype(np.float64)
        std = values.std()
        z[:, k] = (values - values.mean()) / (std if std > 0 else 1.0)
    weights = np.random.default_rng([seed, 30]).normal(0.0, 1.0 / np.sqrt(j), (j, N_MIXES))
    out[:, j:] = np.tanh(z @ weights.astype(np.float32))
    return out


def split_indices(
    rows: int, seed: int, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices from a seeded permutation; each sorted for cache-friendly reads."""
    order = np.random.default_rng([seed, 31]).permutation(rows)
    n_test = round(rows * test_fraction)
    if not 0 < n_test < rows:
        raise ValueError(f"{rows} rows with test_fraction {test_fraction} leave an empty side.")
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def data_fingerprint(rows: int, seed: int) -> dict[str, Any]:
    """What a cached data set must match: size, seed, recipe and the generator's source."""
    source = (PROJECT_ROOT / "mlre" / "data" / "generator.py").read_bytes()
    return {
        "rows": rows,
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "test_fraction": TEST_FRACTION,
        "generator_sha256": hashlib.sha256(source).hexdigest(),
    }


def data_dir(rows: int, seed: int) -> Path:
    """Where the data set of (rows, seed) is cached."""
    return BENCH_ROOT / "data" / f"rows{rows}-seed{seed}"


def prepare_data(rows: int, seed: int, folder: Path) -> dict[str, Any]:
    """Generate, build features, split and save the four arrays plus a manifest in `folder`."""
    began = time.perf_counter()
    frame = generate_frame(rows, seed)
    generated_s = time.perf_counter() - began
    label = frame["is_fraud"].to_numpy(dtype=np.float32)
    features = build_features(frame, seed)
    del frame
    train, test = split_indices(rows, seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": features[train],
        "y_train": label[train],
        "x_test": features[test],
        "y_test": label[test],
    }
    for name, array in arrays.items():
        with atomic_output(folder / f"{name}.npy") as out:
            np.save(out, array)
    manifest = data_fingerprint(rows, seed) | {
        "train_rows": int(train.size),
        "test_rows": int(test.size),
        "fraud_rate": float(label.mean()),
        "generate_s": round(generated_s, 2),
        "prepare_s": round(time.perf_counter() - began, 2),
        "prepare_peak_rss_mb": round(peak_rss_mb(), 1),
    }
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def cached_manifest(rows: int, seed: int) -> dict[str, Any] | None:
    """The cached data set's manifest if it matches the current fingerprint, else None."""
    path = data_dir(rows, seed) / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    fingerprint = data_fingerprint(rows, seed)
    return manifest if all(manifest.get(k) == v for k, v in fingerprint.items()) else None


# --------------------------------------------------------------------------------------------
# One side in its own process
# --------------------------------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow)."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _proc_status_mb(field: str) -> float | None:
    """A `/proc/self/status` memory field (VmHWM, VmRSS) in MiB; None off Linux."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith(f"{field}:"))
        return int(line.split()[1]) / 1024
    return None


def peak_rss_mb() -> float:
    """This process's own high-water RSS since exec (VmHWM; ru_maxrss where /proc is missing)."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def classifier(device: Device, seed: int, n_jobs: int, **overrides: Any) -> Any:
    """The benchmark's XGBClassifier: MODEL_PARAMS, this device, this seed and thread count."""
    from xgboost import XGBClassifier

    params = {**MODEL_PARAMS, **overrides}
    return XGBClassifier(**params, device=device, n_jobs=n_jobs, random_state=seed)


def effective_device(model: Any) -> str:
    """The device the fitted booster really used (XGBoost may have fallen back to the CPU)."""
    config = json.loads(model.get_booster().save_config())
    return str(config["learner"]["generic_param"]["device"])


def warm_up(device: Device, seed: int, n_jobs: int) -> tuple[str, float, list[str]]:
    """A two-round fit on 2,000 random rows: (device used, seconds, XGBoost's warnings)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2_000, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=2_000) > 0).astype(np.float32)
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = classifier(device, seed, n_jobs, n_estimators=2).fit(x, y)
    return effective_device(model), time.perf_counter() - began, [str(w.message) for w in caught]


def gpu_name() -> str | None:
    """The first GPU's name and memory from nvidia-smi, or None without it."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        lines = [x.strip() for x in done.stdout.splitlines() if x.strip()]
        return lines[0] if lines else None
    return None


def run_side(device: Device, folder: Path, seed: int, n_jobs: int) -> dict[str, Any]:
    """Warm up (for CUDA: probe), load the data, time fit and predict, score test ROC AUC."""
    from sklearn.metrics import roc_auc_score
    from xgboost.core import XGBoostError

    try:
        used, warmup_s, caught = warm_up(device, seed, n_jobs)
    except XGBoostError as exc:  # e.g. a driver too old for the wheel's CUDA
        return {"available": False, "reason": f"a tiny fit with device={device!r} failed: {exc}"}
    if used != device:
        return {
            "available": False,
            "reason": f"a tiny fit with device={device!r} ran on {used!r}"
            + (f"; XGBoost said: {' | '.join(caught)}" if caught else ""),
        }
    began = time.perf_counter()
    x_train, y_train = np.load(folder / "x_train.npy"), np.load(folder / "y_train.npy")
    x_test, y_test = np.load(folder / "x_test.npy"), np.load(folder / "y_test.npy")
    load_s = time.perf_counter() - began
    rss_before_fit = _proc_status_mb("VmRSS")
    model = classifier(device, seed, n_jobs)
    began = time.perf_counter()
    model.fit(x_train, y_train)
    fit_s = time.perf_counter() - began
    if effective_device(model) != device:
        raise RuntimeError(f"the timed fit ran on {effective_device(model)!r}, not {device!r}")
    began = time.perf_counter()
    scores = model.predict_proba(x_test)[:, 1]
    predict_s = time.perf_counter() - began
    return {
        "available": True,
        "device": device,
        **({"gpu_name": gpu_name()} if device == "cuda" else {}),
        "n_jobs": n_jobs,
        "train_rows": int(x_train.shape[0]),
        "test_rows": int(x_test.shape[0]),
        "trees": int(model.get_booster().num_boosted_rounds()),
        "warmup_s": round(warmup_s, 3),
        "load_s": round(load_s, 3),
        "fit_s": round(fit_s, 3),
        "rows_per_s": round(x_train.shape[0] / fit_s, 1),
        "predict_s": round(predict_s, 3),
        "test_auc": round(float(roc_auc_score(y_test, scores)), 6),
        "rss_before_fit_mb": round(rss_before_fit, 1) if rss_before_fit is not None else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def child_env() -> dict[str, str]:
    """The children's environment: temp files under `.mlre/tmp`, never the home folder."""
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(TMP_DIR), "PYTHONUNBUFFERED": "1"}


def spawn(args: Sequence[str], out: Path, timeout_s: int = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run `python -m bench.gpu_training ARGS --out OUT` fresh, polling its RSS; read OUT back."""
    import psutil

    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.gpu_training", *args, "--out", str(out)]
    began = time.perf_counter()
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=child_env())
    polled = 0
    while proc.poll() is None:
        if time.perf_counter() - began > timeout_s:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{' '.join(args)}: killed after {timeout_s} s")
        with contextlib.suppress(psutil.Error):  # it may exit between poll() and here
            polled = max(polled, psutil.Process(proc.pid).memory_info().rss)
        time.sleep(RSS_POLL_S)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(args)}: child exited with code {proc.returncode}")
    result = json.loads(out.read_text())
    result["process_wall_s"] = round(time.perf_counter() - began, 1)
    if result.get("available"):
        result["peak_rss_polled_mb"] = round(polled / 2**20, 1)
    return result


# --------------------------------------------------------------------------------------------
# What ran, and the record
# --------------------------------------------------------------------------------------------


def xgboost_info() -> dict[str, Any]:
    """Version, installed distribution and build flags of the xgboost this Python imports."""
    from importlib import metadata

    import xgboost

    build = xgboost.build_info()
    distributions = []
    for name in ("xgboost", "xgboost-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            distributions.append(f"{name}=={metadata.version(name)}")
    keys = ("USE_CUDA", "CUDA_VERSION", "USE_NCCL", "USE_DLOPEN_NCCL", "USE_OPENMP", "USE_RMM")
    return {
        "version": xgboost.__version__,
        "distributions": distributions,
        "build_info": {k: build[k] for k in keys if k in build},
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as info:
            line = next(x for x in info if x.startswith("model name"))
        return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The machine both sides ran on."""
    import psutil

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def cuda_precheck(build_info: Mapping[str, Any], distributions: Sequence[str]) -> str | None:
    """Why CUDA cannot run without trying it (a CPU-only build), or None when it may."""
    if build_info.get("USE_CUDA"):
        return None
    installed = ", ".join(distributions) or "xgboost"
    return (
        f"the installed XGBoost ({installed}) is a CPU-only build (build_info USE_CUDA=False); "
        "on a GPU machine the CUDA wheel xgboost==3.2.0 replaces xgboost-cpu "
        "(bench/gpu_device_check.sh)"
    )


@dataclass(frozen=True)
class Verdict:
    """The comparison against the target: ratio, AUC difference, met, and why."""

    ratio: float | None
    auc_difference: float | None
    met: bool | None
    status: str


def judge(
    rows: int,
    cpu: Mapping[str, Any],
    gpu: Mapping[str, Any] | None,
    target: Mapping[str, float] = TARGET,
) -> Verdict:
    """Speed-up (CPU fit s / CUDA fit s) and AUC gap against the target; None when unmeasured."""
    if gpu is None:
        return Verdict(None, None, None, "not measured: no usable CUDA device")
    ratio = round(cpu["fit_s"] / gpu["fit_s"], 2)
    gap = round(abs(cpu["test_auc"] - gpu["test_auc"]), 6)
    if rows < target["at_rows"]:
        status = f"not measured at the target size: ran {rows:,} rows, target is at " + (
            f"{int(target['at_rows']):,}"
        )
        return Verdict(ratio, gap, None, status)
    misses = []
    if ratio < target["min_speedup"]:
        misses.append(f"speed-up {ratio}x < {target['min_speedup']}x")
    if gap > target["max_auc_difference"]:
        misses.append(f"AUC difference {gap} > {target['max_auc_difference']}")
    return Verdict(ratio, gap, not misses, "met" if not misses else "not met: " + "; ".join(misses))


def build_record(
    ran: Mapping[str, Any],
    cpu: Mapping[str, Any],
    gpu: Mapping[str, Any],
    target: Mapping[str, float] = TARGET,
) -> dict[str, Any]:
    """The results document. `gpu` is the CUDA side's figures or {"available": False, "reason"}."""
    measured = gpu if gpu.get("available") else None
    verdict = judge(int(ran["rows"]), cpu, measured, target)
    status = verdict.status if measured else f"{verdict.status} ({gpu.get('reason', 'unknown')})"
    return {
        "benchmark": "gpu_training",
        "issue": 16,
        "what_ran": dict(ran),
        "roles": {"ours": "gpu (device='cuda')", "baseline": "cpu (device='cpu', all cores)"},
        "cpu": dict(cpu),
        "gpu": dict(measured) if measured else NOT_AVAILABLE,
        "gpu_not_available_reason": None if measured else gpu.get("reason", "unknown"),
        "ratio": verdict.ratio,
        "ratio_definition": "speed-up: cpu.fit_s / gpu.fit_s (same data, params and seed)",
        "auc_difference": verdict.auc_difference,
        "target": dict(target),
        "met": verdict.met,
        "status": status,
        "notes": NOTES,
    }


def what_ran(rows: int, seed: int, manifest: Mapping[str, Any], n_jobs: int) -> dict[str, Any]:
    """Data, model and machine of this run, for the record."""
    config = generator_config(rows, seed)
    cfg = {
        "n_customers": config.n_customers,
        "start": config.start.isoformat(),
        "days": config.days,
        "seed": config.seed,
        "transactions_per_customer_day": config.transactions_per_customer_day,
        "scenario": "none (no drift)",
    }
    return {
        "rows": rows,
        "train_rows": manifest["train_rows"],
        "test_rows": manifest["test_rows"],
        "test_fraction": TEST_FRACTION,
        "features": len(FEATURE_NAMES),
        "feature_names": list(FEATURE_NAMES),
        "fraud_rate": round(manifest["fraud_rate"], 5),
        "seed": seed,
        "data_preparation": {
            k: manifest.get(k) for k in ("generate_s", "prepare_s", "prepare_peak_rss_mb")
        },
        "data_source": {
            "generator": "mlre.data.generator (transactions joined with customer_daily_stats)",
            "generator_config": cfg,
            "generator_sha256": manifest["generator_sha256"],
            "recipe": FEATURE_RECIPE,
            "dtype": "float32",
        },
        "model": {
            "class": "xgboost.XGBClassifier",
            "params": dict(MODEL_PARAMS) | {"random_state": seed, "n_jobs": n_jobs},
            "device": {"baseline": "cpu", "ours": "cuda"},
        },
        "xgboost": xgboost_info(),
        "machine": machine(),
        "measurement": (
            "each side in a fresh subprocess: a 2-round warm-up fit on 2,000 random rows (for "
            "CUDA also the probe: the booster's effective device is read back), the cached "
            ".npy arrays loaded, then XGBClassifier.fit timed alone (DMatrix/QuantileDMatrix "
            "construction and the host-to-device copy included), predict_proba on the test rows, "
            "ROC AUC; peak_rss_mb = the child's VmHWM (imports, data and fit), "
            "peak_rss_polled_mb = the parent's 0.2 s psutil poll of the child"
        ),
    }


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def ensure_data(rows: int, seed: int) -> dict[str, Any]:
    """The cached data set's manifest, generating it in a subprocess when missing or stale."""
    manifest = cached_manifest(rows, seed)
    if manifest is not None:
        log(f"data: reusing {data_dir(rows, seed).relative_to(PROJECT_ROOT)}")
        return manifest
    log(f"data: generating {rows:,} rows x {len(FEATURE_NAMES)} features (seed {seed}) ...")
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    args = ["--prepare", "--rows", str(rows), "--seed", str(seed)]
    result = spawn(args, BENCH_ROOT / "prep.json")
    log(f"data: done in {result['prepare_s']} s (fraud rate {result['fraud_rate']:.4f})")
    return result


def run(rows: int, seed: int, results: Path, require_gpu: bool = False) -> dict[str, Any]:
    """Prepare the data, run the CPU side and (when usable) the CUDA side, write the record."""
    import xgboost

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    manifest = ensure_data(rows, seed)
    n_jobs = usable_cores()
    folder = data_dir(rows, seed)
    side_args = ["--data", str(folder), "--seed", str(seed), "--n-jobs", str(n_jobs)]
    log(f"cpu: fitting {MODEL_PARAMS['n_estimators']} trees on {n_jobs} cores ...")
    cpu = spawn(["--side", "cpu", *side_args], BENCH_ROOT / "cpu.json")
    log(f"cpu: fit {cpu['fit_s']} s, AUC {cpu['test_auc']}, peak RSS {cpu['peak_rss_mb']} MB")
    info = xgboost_info()
    reason = cuda_precheck(xgboost.build_info(), info["distributions"])
    if reason is None:
        log("cuda: fitting ...")
        gpu = spawn(["--side", "cuda", *side_args], BENCH_ROOT / "cuda.json")
    else:
        gpu = {"available": False, "reason": reason}
    if gpu.get("available"):
        log(f"cuda: fit {gpu['fit_s']} s, AUC {gpu['test_auc']}, peak RSS {gpu['peak_rss_mb']} MB")
    else:
        log(f"cuda: {NOT_AVAILABLE}: {gpu['reason']}")
    ran = what_ran(rows, seed, manifest, n_jobs)
    ran["machine"]["load_avg_at_start"] = load_at_start
    ran["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    record = build_record(ran, cpu, gpu)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(results, json.dumps(record, indent=2) + "\n")
    log(f"ratio {record['ratio']}, status: {record['status']} -> {results}")
    if require_gpu and not gpu.get("available"):
        raise SystemExit(f"--require-gpu: the CUDA side did not run: {gpu['reason']}")
    return record


def smoke(seed: int) -> dict[str, Any]:
    """One boosting round on the CUDA device over SMOKE_ROWS generated rows; raises unless it
    really ran on the GPU."""
    frame = generate_frame(SMOKE_ROWS, seed)
    x, y = build_features(frame, seed), frame["is_fraud"].to_numpy(dtype=np.float32)
    model = classifier("cuda", seed, usable_cores(), n_estimators=1)
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y)
    used = effective_device(model)
    result = {
        "rows": SMOKE_ROWS,
        "rounds": int(model.get_booster().num_boosted_rounds()),
        "device": used,
        "fit_s": round(time.perf_counter() - began, 3),
        "gpu": gpu_name(),
        "warnings": [str(w.message) for w in caught],
    }
    if used != "cuda":
        raise SystemExit(f"smoke: the fit ran on {used!r}, not on a CUDA device: {result}")
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (`--prepare`, `--side`, `--data`, `--n-jobs`, `--out` are internal)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_training", description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    parser.add_argument("--require-gpu", action="store_true", help="fail unless CUDA ran")
    parser.add_argument("--smoke", action="store_true", help="one round on CUDA, then exit")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("cpu", "cuda"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n-jobs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """The whole benchmark, or (internal) one child's step, or the CUDA smoke fit."""
    args = _parse(argv)
    if args.smoke:
        log(f"smoke: {json.dumps(smoke(args.seed))}")
    elif args.prepare:
        manifest = prepare_data(args.rows, args.seed, data_dir(args.rows, args.seed))
        write_atomic(args.out, json.dumps(manifest))
    elif args.side:
        result = run_side(args.side, args.data, args.seed, args.n_jobs)
        write_atomic(args.out, json.dumps(result))
    else:
        run(args.rows, args.seed, args.results, args.require_gpu)


if __name__ == "__main__":
    main()
