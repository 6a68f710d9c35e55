"""Soak: the prediction service at a fixed rate for minutes, with the champion alias moved at 1/3
of the run and Redis killed and restarted at 2/3; error rate, latency, memory growth (issue 8).

Everything runs on 127.0.0.1 under `.mlre/bench/soak/`: a redis-server with an append-only file
(a SIGKILL loses nothing, as with production's replicated, snapshotted cache) and a lean MLflow
server, a Feast repo on that Redis with two registered model versions (`bench.serving._prepare`),
the service as production runs it (`python -m serving`, its own process) and the open-loop load
generator (`bench.loadgen`, its own process). This process moves the alias, kills Redis
(SIGKILL), starts it again on the same port and data dir after `--outage` seconds, and samples
the service's RSS from /proc/<pid>/status. After the load it stops the service with SIGTERM and
counts the prediction-log rows of this run against the 200 answers.

    python -m bench.soak [--rate 50] [--duration 600]   (or MLRE_SOAK_RATE / MLRE_SOAK_SECONDS)

Results: bench/results/soak.json and a short table. No `main()`: `make bench` leaves it to
`make soak`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlre.settings import PROJECT_ROOT, Settings, apply_runtime_env
from tests.support.servers import RedisServer, run_dir

RESULTS_PATH = PROJECT_ROOT / "bench" / "results" / "soak.json"
RESULTS_ENV = "MLRE_SOAK_JSON"  # where the soak test also writes its result (make reliability)
STATE_ROOT = PROJECT_ROOT / ".mlre" / "bench" / "soak"
ID_PREFIX = "soak"
FALLBACK = "fallback"  # serving.routing.FALLBACK (not imported: serving pulls in Feast)
WARMUP_REQUESTS = 20
LOAD_GRACE_S = 120.0  # past the schedule: the last answers, then the generator's own exit
# A correct service grows by a bounded step, not per request: the second model version (kept
# as the fallback after the swap), thread stacks and allocator arenas of the feature threads,
# Redis reconnects. At 50 req/s a leak of 1 KiB per request is ~29 MiB over 10 minutes, so a
# 32 MiB bound on growth after warm-up catches leaks of that order and above; see `memory`.
TARGETS: dict[str, float] = {"errors": 0, "lost_rows": 0, "rss_growth_mb": 32.0}


@dataclass(frozen=True)
class SoakConfig:
    """Rate, length and the moments of the two faults (fractions of the run)."""

    rate: float = 50.0
    duration_s: float = 600.0
    window_s: float = 10.0
    outage_s: float = 5.0
    sample_every_s: float = 5.0
    warmup_fraction: float = 0.1  # RSS growth is measured from here (caches, threads, pools)

    @property
    def swap_at_s(self) -> float:
        return self.duration_s / 3

    @property
    def redis_kill_at_s(self) -> float:
        return 2 * self.duration_s / 3

    @classmethod
    def from_env(cls) -> SoakConfig:
        """Defaults overridden by MLRE_SOAK_RATE / MLRE_SOAK_SECONDS."""
        env = os.environ
        return cls(
            rate=float(env.get("MLRE_SOAK_RATE", cls.rate)),
            duration_s=float(env.get("MLRE_SOAK_SECONDS", cls.duration_s)),
        )


@dataclass
class PersistentRedis(RedisServer):
    """redis-server with an append-only file: a SIGKILL loses nothing, `start()` reloads it."""

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--appendonly") + 1] = "yes"
        return [*argv, "--appendfsync", "everysec"]

    def keys(self) -> int:
        import redis

        with redis.Redis(host=self.host, port=self.port, socket_timeout=5) as client:
            return int(client.dbsize())


@dataclass(frozen=True)
class Action:
    """Something done to the platform at `at_s` seconds into the load; `run` returns details."""

    name: str
    at_s: float
    run: Callable[[], dict[str, Any]]


# ---- measuring the service process --------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, kB), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def scrape_counters(port: int, names: Iterable[str]) -> dict[str, dict[str, float]]:
    """Prometheus counters of the service by name, keyed by their label values."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {f"{name}_total": name for name in names}
    found: dict[str, dict[str, float]] = {name: {} for name in wanted.values()}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = "/".join(sample.labels.values()) or "-"
                found[wanted[sample.name]][key] = sample.value
    return found


def logged_rows(settings: Settings, prefix: str) -> dict[str, int]:
    """Prediction-log rows of this run (request ids `<prefix>-...`), and how many are unique."""
    from mlre.prediction_log import read_predictions

    log = read_predictions(settings.prediction_log_root, settings.model_name)
    ours = log[log["request_id"].astype(str).str.startswith(f"{prefix}-")]
    return {"rows": len(ours), "unique_request_ids": int(ours["request_id"].nunique())}


# ---- driving the run ----------------------------------------------------------------------


def _loadgen(
    url: str,
    config: SoakConfig,
    start_at: float,
    out: Path,
    log: Any,
    *,
    id_prefix: str = ID_PREFIX,
) -> subprocess.Popen:
    """`python -m bench.loadgen` in its own process, starting its schedule at `start_at`; its
    request ids start with `id_prefix` (how its rows are told apart in the prediction log)."""
    from bench.serving import N_CUSTOMERS

    argv = [
        sys.executable, "-m", "bench.loadgen", url,
        "--rate", str(config.rate), "--duration", str(config.duration_s),
        "--window", str(config.window_s), "--customers", str(N_CUSTOMERS),
        "--warmup", str(WARMUP_REQUESTS), "--start-at", str(start_at),
        "--id-prefix", id_prefix, "--out", str(out),
    ]  # fmt: skip
    return subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)


def drive(
    load: subprocess.Popen, start_at: float, actions: list[Action], pid: int, config: SoakConfig
) -> tuple[list[list[float]], list[dict[str, Any]]]:
    """Until the load generator exits: run each action on time, sample RSS every few seconds.

    Returns the RSS samples `[seconds, MiB]` and what each action did and when.
    """
    pending = sorted(actions, key=lambda a: a.at_s)
    samples: list[list[float]] = []
    done: list[dict[str, Any]] = []
    next_sample = start_at
    deadline = start_at + config.duration_s + LOAD_GRACE_S
    while load.poll() is None:
        now = time.time()
        if now > deadline:
            load.kill()
            raise RuntimeError(f"load generator still running {LOAD_GRACE_S:.0f} s past its end")
        if pending and now >= start_at + pending[0].at_s:
            action = pending.pop(0)
            details = action.run()
            done.append({"action": action.name, "at_s": round(now - start_at, 2), **details})
            continue
        if now >= next_sample:
            samples.append([round(now - start_at, 1), rss_mb(pid)])
            next_sample += config.sample_every_s
        wake = min([next_sample, *(start_at + a.at_s for a in pending[:1])])
        time.sleep(min(0.5, max(0.0, wake - time.time())))
    samples.append([round(time.time() - start_at, 1), rss_mb(pid)])
    return samples, done


def fault_actions(
    config: SoakConfig, settings: Settings, new_version: str, redis: PersistentRedis
) -> list[Action]:
    """Move the champion alias at 1/3; SIGKILL Redis at 2/3 and start it `outage_s` later."""
    from mlflow import MlflowClient

    def swap() -> dict[str, Any]:
        client = MlflowClient(settings.mlflow_tracking_uri)
        client.set_registered_model_alias(settings.model_name, "champion", new_version)
        return {"champion": new_version}

    def kill() -> dict[str, Any]:
        keys = redis.keys()
        redis.kill()
        return {"keys_before": keys}

    def start() -> dict[str, Any]:
        began = time.monotonic()
        redis.start()
        return {"keys_after": redis.keys(), "start_s": round(time.monotonic() - began, 3)}

    kill_at = config.redis_kill_at_s
    return [
        Action("alias swap", config.swap_at_s, swap),
        Action("redis kill", kill_at, kill),
        Action("redis start", kill_at + config.outage_s, start),
    ]


# ---- the report (pure) --------------------------------------------------------------------


def _sum_counts(windows: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for window in windows:
        for name, count in window[key].items():
            total[name] = total.get(name, 0) + count
    return total


def _between(windows: list[dict], start: float, end: float, width: float) -> list[dict]:
    """Windows lying wholly inside [start, end)."""
    return [w for w in windows if w["start_s"] >= start and w["start_s"] + width <= end]


def _touching(windows: list[dict], start: float, end: float, width: float) -> list[dict]:
    """Windows that overlap [start, end]."""
    return [w for w in windows if w["start_s"] <= end and w["start_s"] + width > start]


def _at(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(e for e in events if e["action"] == name)


def swap_summary(load: dict[str, Any], events: list[dict], config: SoakConfig) -> dict[str, Any]:
    """Versions served before the swap and after it (the window it falls in left out)."""
    swap = _at(events, "alias swap")
    windows, width = load["windows"], config.window_s
    new = load["seen"]["versions"].get(swap["champion"], {})
    return {
        "at_s": swap["at_s"],
        "new_champion": swap["champion"],
        "versions_before": _sum_counts(_between(windows, 0, swap["at_s"], width), "versions"),
        "versions_after": _sum_counts(
            _between(windows, swap["at_s"] + width, config.duration_s, width), "versions"
        ),
        "new_version_first_seen_s": new.get("first_s"),
    }


def redis_summary(load: dict[str, Any], events: list[dict], config: SoakConfig) -> dict[str, Any]:
    """Fallback answers in the windows around the outage and anywhere else."""
    kill, start = _at(events, "redis kill"), _at(events, "redis start")
    back_at = start["at_s"] + start["start_s"]
    near = _touching(load["windows"], kill["at_s"], back_at, config.window_s)
    during = sum(w["routes"].get(FALLBACK, 0) for w in near)
    return {
        "killed_at_s": kill["at_s"],
        "back_at_s": round(back_at, 2),
        "keys_before": kill["keys_before"],
        "keys_after": start["keys_after"],
        "fallbacks_during_outage": during,
        "fallbacks_elsewhere": load["totals"]["routes"].get(FALLBACK, 0) - during,
        "fallback_seen": load["seen"]["routes"].get(FALLBACK),
    }


def memory_summary(samples: list[list[float]], config: SoakConfig) -> dict[str, Any]:
    """RSS at the start, after warm-up and at the end; growth from warm-up to the end."""
    warm_at = config.duration_s * config.warmup_fraction
    warm = next((mb for t, mb in samples if t >= warm_at), samples[-1][1])
    start, end = samples[0][1], samples[-1][1]
    return {
        "rss_start_mb": start,
        "rss_after_warmup_mb": warm,
        "warmup_at_s": warm_at,
        "rss_end_mb": end,
        "rss_max_mb": max(mb for _, mb in samples),
        "growth_mb": round(end - warm, 1),
        "growth_from_start_mb": round(end - start, 1),
        "samples": samples,
    }


def summarize(
    config: SoakConfig,
    load: dict[str, Any],
    samples: list[list[float]],
    events: list[dict[str, Any]],
    log: dict[str, int],
) -> dict[str, Any]:
    """Figures, targets and whether each was met."""
    totals, warmup = load["totals"], load["warmup"]
    answered = totals["ok"] + warmup["ok"]
    memory = memory_summary(samples, config)
    prediction_log = {**log, "ok_responses": answered, "lost": answered - log["unique_request_ids"]}
    met = {
        "errors": totals["errors"] + warmup["errors"] <= TARGETS["errors"],
        "lost_rows": prediction_log["lost"] <= TARGETS["lost_rows"] and log["rows"] == answered,
        "rss_growth_mb": memory["growth_mb"] <= TARGETS["rss_growth_mb"],
    }
    error_rate = totals["errors"] / totals["requests"] if totals["requests"] else None
    return {
        "config": {**asdict(config), "swap_at_s": config.swap_at_s},
        "totals": {**totals, "error_rate": error_rate, "achieved_rps": load["achieved_rps"]},
        "load_generator": {k: load[k] for k in ("send_lag_p99_ms", "send_lag_max_ms")},
        "alias_swap": swap_summary(load, events, config),
        "redis_restart": redis_summary(load, events, config),
        "memory": memory,
        "prediction_log": prediction_log,
        "events": events,
        "windows": load["windows"],
        "targets": TARGETS,
        "met": met,
    }


def render(result: dict[str, Any]) -> str:
    """A short plain-text table of the figures that matter."""
    t, swap, r, m = (result[k] for k in ("totals", "alias_swap", "redis_restart", "memory"))
    log = result["prediction_log"]
    rows = [
        ("requests / non-200", f"{t['requests']} / {t['errors']}", result["met"]["errors"]),
        ("p50 / p99 / max ms", f"{t['p50_ms']} / {t['p99_ms']} / {t['max_ms']}", None),
        ("versions before -> after swap", f"{swap['versions_before']} -> "
         f"{swap['versions_after']}", None),
        ("fallbacks in outage / elsewhere", f"{r['fallbacks_during_outage']} / "
         f"{r['fallbacks_elsewhere']}", None),
        ("redis keys before -> after", f"{r['keys_before']} -> {r['keys_after']}", None),
        ("RSS start / warm / end MiB", f"{m['rss_start_mb']} / {m['rss_after_warmup_mb']} / "
         f"{m['rss_end_mb']} (+{m['growth_mb']})", result["met"]["rss_growth_mb"]),
        ("log rows / 200 answers", f"{log['rows']} / {log['ok_responses']}",
         result["met"]["lost_rows"]),
    ]  # fmt: skip
    width = max(len(name) for name, _, _ in rows)
    mark = {True: "  met", False: "  MISSED", None: ""}
    return "\n".join(f"{name.ljust(width)}  {value}{mark[ok]}" for name, value, ok in rows)


# ---- the whole run ------------------------------------------------------------------------


def run_soak(root: Path, config: SoakConfig) -> dict[str, Any]:
    """Start the servers and the service, drive the load with both faults, stop, report."""
    from mlflow import MlflowClient

    from bench.serving import _prepare, _serving_process
    from mlre.supervisor import free_port
    from tests.support.mlflow_server import start_mlflow

    redis = PersistentRedis(data_dir=run_dir(root) / "redis")
    redis.start()
    mlflow_server = None
    try:
        mlflow_server = start_mlflow(root)
        settings, (_, versions, _) = _prepare(
            root, redis.connection_string, mlflow_server.tracking_uri
        )
        client = MlflowClient(settings.mlflow_tracking_uri)
        client.set_registered_model_alias(settings.model_name, "champion", versions[0])
        port = free_port()
        actions = fault_actions(config, settings, versions[1], redis)
        url = f"http://127.0.0.1:{port}/predict"
        with _serving_process(settings, port) as service, (root / "load.log").open("wb") as out:
            start_at = time.time() + 3.0  # the generator's start-up and warm-up fit in here
            load = _loadgen(url, config, start_at, root / "load.json", out)
            try:
                samples, events = drive(load, start_at, actions, service.pid, config)
            finally:
                if load.poll() is None:
                    load.kill()
                load.wait()
            counters = scrape_counters(port, ["mlre_serving_fallbacks", "mlre_serving_errors"])
        result = json.loads((root / "load.json").read_text())
        log = logged_rows(settings, ID_PREFIX)
    finally:
        if mlflow_server is not None:
            mlflow_server.stop()
        redis.stop()
    return {
        **summarize(config, result, samples, events, log),
        "service_counters": counters,
        "service_exit_code": service.returncode,
    }


def describe(config: SoakConfig, result: dict) -> dict:
    """The run's result with what ran, on which machine and when (the results JSON)."""
    return {
        "what": (
            f"POST /predict (1 instance) at {config.rate:g} req/s for {config.duration_s:g} s, "
            "open loop, load generator and `python -m serving` in their own processes, Redis "
            "online store; champion alias moved at 1/3, Redis SIGKILLed at 2/3 and restarted "
            f"{config.outage_s:g} s later (append-only file, same port and data dir)."
        ),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        **result,
    }


def save(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def cli(argv: list[str] | None = None) -> int:
    """Run the soak under .mlre/bench/soak, write bench/results/soak.json, print the table."""
    defaults = SoakConfig.from_env()
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests per second")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--outage", type=float, default=defaults.outage_s, help="Redis down, s")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    config = SoakConfig(rate=args.rate, duration_s=args.duration, outage_s=args.outage)

    shutil.rmtree(STATE_ROOT, ignore_errors=True)
    STATE_ROOT.mkdir(parents=True)
    apply_runtime_env(Settings(home=STATE_ROOT / "home"))
    result = describe(config, run_soak(STATE_ROOT, config))
    save(result, args.out)
    print(render(result))
    print(f"results: {args.out}")
    return 0 if all(result["met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(cli())
