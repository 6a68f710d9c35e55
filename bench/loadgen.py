"""Open-loop, fixed-rate load generator for the prediction service's POST /predict.

Request i goes out at start + i / rate whether or not earlier ones have answered (open loop), so a
slow server shows up as latency and errors, never as a politely lower rate. Each request scores
one instance with a random known customer and amount and carries its own request_id
(`<prefix>-<i>`), so the prediction log can be matched against what was answered. With
`--features` it sends `feast serve` bodies for the same customers instead (the fetch-only
reference of the serving benchmark). Runs in its own process (asyncio streams, see `Client`) so
it does not share an interpreter with the service it measures:

    python -m bench.loadgen http://127.0.0.1:8000/predict --rate 50 --duration 600 --window 10

Prints one JSON object (or writes it to --out): totals, per-window stats (requests, non-200
errors by kind, p50/p90/p99/max latency, routes and model versions read from the response
bodies), and when each version and route was first and last seen. No `main()`: `make bench` does
not run it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_FIRST_CUSTOMER = 1000  # mlre.data.generator's customer_id_offset


@dataclass(frozen=True)
class LoadConfig:
    """What to send, how fast and for how long."""

    url: str
    rate: float
    duration_s: float
    window_s: float = 10.0
    customers: int = 2_000
    first_customer: int = DEFAULT_FIRST_CUSTOMER
    seed: int = 1
    timeout_s: float = 5.0
    connections: int = 100
    warmup: int = 0
    start_at: float | None = None  # wall-clock (time.time()) start of the schedule
    id_prefix: str = "load"
    # Feature references: send Feast feature-server bodies (`feast serve` /get-online-features)
    # for the same customers instead of /predict bodies: the fetch-only reference.
    features: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return int(self.rate * self.duration_s)


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due, how long it took, and what answered it."""

    due_s: float
    latency_ms: float
    status: int  # 0: no HTTP answer (connection refused, timeout)
    error: str | None = None
    routes: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    lag_ms: float = 0.0  # how late the generator sent it


@dataclass
class Bodies:
    """Deterministic request bodies: one instance, a known customer, a plausible amount."""

    config: LoadConfig
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def make(self, request_id: str) -> dict[str, Any]:
        customer = self.config.first_customer + self.rng.randrange(self.config.customers)
        amount = round(self.rng.lognormvariate(3.5, 0.8), 2)
        if self.config.features:
            return {"features": list(self.config.features), "entities": {"customer_id": [customer]}}
        instance = {"customer_id": customer, "amount": amount, "request_id": request_id}
        return {"instances": [instance]}


# ---- statistics (pure) -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return round(sorted_values[rank - 1], 3)


def summarize(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    """Counts, latency percentiles, error kinds, routes and versions of a set of requests."""
    items = list(outcomes)
    latencies = sorted(o.latency_ms for o in items)
    errors = Counter(o.error for o in items if o.status != 200)
    return {
        "requests": len(items),
        "ok": sum(o.status == 200 for o in items),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": percentile(latencies, 1.0),
        "routes": dict(Counter(r for o in items for r in o.routes)),
        "versions": dict(Counter(v for o in items for v in o.versions)),
    }


def windows(outcomes: Sequence[Outcome], window_s: float, duration_s: float) -> list[dict]:
    """`summarize` per window of `window_s` seconds of due time, each with its start."""
    count = max(1, math.ceil(duration_s / window_s))
    buckets: list[list[Outcome]] = [[] for _ in range(count)]
    for outcome in outcomes:
        buckets[min(count - 1, int(outcome.due_s // window_s))].append(outcome)
    return [
        {"start_s": round(i * window_s, 3), **summarize(bucket)} for i, bucket in enumerate(buckets)
    ]


def seen(outcomes: Sequence[Outcome]) -> dict[str, dict[str, dict[str, float]]]:
    """When each model version and route first and last answered (due time, seconds)."""
    spans: dict[str, dict[str, dict[str, float]]] = {"versions": {}, "routes": {}}
    for outcome in outcomes:
        for kind, names in (("versions", outcome.versions), ("routes", outcome.routes)):
            for name in names:
                span = spans[kind].setdefault(name, {"first_s": outcome.due_s})
                span["last_s"] = outcome.due_s
    return spans


def report(
    config: LoadConfig, warm: list[Outcome], measured: list[Outcome], elapsed_s: float
) -> dict[str, Any]:
    """The JSON-ready result of one run."""
    lags = sorted(o.lag_ms for o in measured)
    return {
        "url": config.url,
        "rate": config.rate,
        "duration_s": config.duration_s,
        "window_s": config.window_s,
        "id_prefix": config.id_prefix,
        "elapsed_s": round(elapsed_s, 3),
        "achieved_rps": round(len(measured) / elapsed_s, 2) if elapsed_s > 0 else None,
        "send_lag_p99_ms": percentile(lags, 0.99),
        "send_lag_max_ms": percentile(lags, 1.0),
        "warmup": summarize(warm),
        "totals": summarize(measured),
        "seen": seen(measured),
        "windows": windows(measured, config.window_s, config.duration_s),
    }


# ---- sending ----------------------------------------------------------------------------------

# A kept-alive connection idle this long is closed rather than reused: uvicorn closes idle ones
# after 5 s, and a request written into a connection the server is closing fails for no reason
# of the service's.
IDLE_REUSE_S = 2.0


class HttpError(Exception):
    """The server's answer could not be read as HTTP/1.1."""


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection may be reused, of one HTTP/1.1 answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"not an HTTP/1.x status line: {status_line!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size + 2))  # the chunk and its CRLF
        await reader.readuntil(b"\r\n")  # no trailers: the final empty line
        body = b"".join(chunk[:-2] for chunk in chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(parts[1]), body, headers.get("connection") != "close"


@dataclass(eq=False)  # identity-hashed: kept in a set
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0


class Client:
    """POSTs over a pool of kept-alive HTTP/1.1 connections, one request at a time each.

    A few dozen lines of asyncio streams instead of an HTTP library: httpx spends about a
    millisecond of CPU per request, which on a 2-core machine made the generator, not the server,
    the bottleneck above ~100 req/s. Here a request costs tens of microseconds."""

    def __init__(self, url: str, connections: int, timeout_s: float) -> None:
        parsed = urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"load generator URL {url!r}: only plain http://host:port/path")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.path = parsed.path or "/"
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    def _request(self, body: bytes) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("latin-1") + body

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < IDLE_REUSE_S:
                return connection
            self._close(connection)
        reader, writer = await asyncio.open_connection(self.host, self.port)
        connection = _Connection(reader, writer)
        self._open.add(connection)
        return connection

    def _close(self, connection: _Connection) -> None:
        connection.writer.close()
        self._open.discard(connection)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """Status and body of one POST; a failure closes its connection and propagates."""
        async with self._slots:
            async with asyncio.timeout(self.timeout_s):
                connection = await self._connection()
                try:
                    connection.writer.write(self._request(body))
                    status, answer, reusable = await _read_answer(connection.reader)
                except BaseException:
                    self._close(connection)
                    raise
            if reusable:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                self._close(connection)
            return status, answer

    async def close(self) -> None:
        for connection in list(self._open):
            self._close(connection)
        self._idle.clear()


def _parse(body: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Routes and model versions named by a /predict answer."""
    predictions = json.loads(body).get("predictions", [])
    return tuple(p["route"] for p in predictions), tuple(p["model_version"] for p in predictions)


async def _send(client: Client, body: dict[str, Any], due_s: float, lag_ms: float) -> Outcome:
    began = time.perf_counter()
    try:
        status, answer = await client.post(json.dumps(body).encode())
    except Exception as exc:  # a refused connection or a timeout is an error to count
        latency = (time.perf_counter() - began) * 1000
        return Outcome(due_s, latency, 0, type(exc).__name__, lag_ms=lag_ms)
    latency = (time.perf_counter() - began) * 1000
    if status != 200:
        return Outcome(due_s, latency, status, f"HTTP {status}", lag_ms=lag_ms)
    routes, versions = _parse(answer)
    return Outcome(due_s, latency, 200, None, routes, versions, lag_ms)


def _schedule_base(start_at: float | None) -> float:
    """perf_counter() value at which request 0 is due (now, or at wall-clock `start_at`)."""
    now = time.perf_counter()
    return now if start_at is None else now + max(0.0, start_at - time.time())


async def run(config: LoadConfig) -> dict[str, Any]:
    """Warm up (sequential, reported apart), then send the schedule and wait for every answer."""
    bodies = Bodies(config)
    client = Client(config.url, config.connections, config.timeout_s)
    try:
        warm = [
            await _send(client, bodies.make(f"{config.id_prefix}-w{i}"), 0.0, 0.0)
            for i in range(config.warmup)
        ]
        base = _schedule_base(config.start_at)
        await asyncio.sleep(max(0.0, base - time.perf_counter()))
        tasks = []
        for i in range(config.total):
            due = i / config.rate
            delay = base + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_ms = max(0.0, -delay) * 1000
            body = bodies.make(f"{config.id_prefix}-{i}")
            tasks.append(asyncio.create_task(_send(client, body, due, lag_ms)))
        measured = list(await asyncio.gather(*tasks))
        elapsed = time.perf_counter() - base
    finally:
        await client.close()
    return report(config, warm, measured, elapsed)


# ---- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[LoadConfig, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("url", help="the /predict URL")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of schedule")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per stats window")
    parser.add_argument("--customers", type=int, default=2_000, help="distinct customer ids")
    parser.add_argument("--first-customer", type=int, default=DEFAULT_FIRST_CUSTOMER)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s")
    parser.add_argument("--connections", type=int, default=100, help="connection pool size")
    parser.add_argument("--warmup", type=int, default=0, help="sequential requests first")
    parser.add_argument("--start-at", type=float, help="wall-clock epoch seconds to start at")
    parser.add_argument("--id-prefix", default="load", help="request_id prefix")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument(
        "--features", default="", help="comma-separated feature refs: feast serve bodies instead"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.window <= 0:
        parser.error("--rate, --duration and --window must be positive")
    config = LoadConfig(
        url=args.url, rate=args.rate, duration_s=args.duration, window_s=args.window,
        customers=args.customers, first_customer=args.first_customer, seed=args.seed,
        timeout_s=args.timeout, connections=args.connections, warmup=args.warmup,
        start_at=args.start_at, id_prefix=args.id_prefix,
        features=tuple(f for f in args.features.split(",") if f),
    )  # fmt: skip
    return config, args.out


def cli(argv: Sequence[str] | None = None) -> int:
    """Run the load and write the JSON result; exit 0 (errors are data, not a failure)."""
    config, out = parse_args(sys.argv[1:] if argv is None else argv)
    text = json.dumps(asyncio.run(run(config)), indent=2)
    if out is None:
        print(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
