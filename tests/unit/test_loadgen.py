"""The load generator (statistics on hand-made outcomes, its HTTP client on a loopback socket)
and the soak report."""

from __future__ import annotations

import asyncio

import pytest

from bench import loadgen, soak
from bench.loadgen import LoadConfig, Outcome

pytestmark = pytest.mark.unit


EVENTS = [
    {"action": "alias swap", "at_s": 20.0, "champion": "2"},
    {"action": "redis kill", "at_s": 40.0, "keys_before": 5},
    {"action": "redis start", "at_s": 45.0, "keys_after": 5, "start_s": 0.1},
]


def _ok(
    due_s: float, latency_ms: float = 5.0, version: str = "1", route: str = "champion"
) -> Outcome:
    return Outcome(due_s, latency_ms, 200, None, (route,), (version,))


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 0.5) == 50.0
    assert loadgen.percentile(values, 0.99) == 99.0
    assert loadgen.percentile(values, 1.0) == 100.0
    assert loadgen.percentile([], 0.99) is None


def test_summary_counts_errors_by_kind_and_reads_routes() -> None:
    outcomes = [_ok(0.0), _ok(0.1, route="fallback", version="rule")]
    outcomes += [Outcome(0.2, 5000.0, 0, "ReadTimeout"), Outcome(0.3, 3.0, 503, "HTTP 503")]
    summary = loadgen.summarize(outcomes)
    assert (summary["requests"], summary["ok"], summary["errors"]) == (4, 2, 2)
    assert summary["error_kinds"] == {"ReadTimeout": 1, "HTTP 503": 1}
    assert summary["routes"] == {"champion": 1, "fallback": 1}
    assert summary["versions"] == {"1": 1, "rule": 1}
    assert summary["max_ms"] == 5000.0


def test_windows_bucket_by_due_time() -> None:
    outcomes = [_ok(0.0), _ok(9.99), _ok(10.0), _ok(20.0)]  # 20.0: the end of a 20 s run
    windows = loadgen.windows(outcomes, 10.0, 20.0)
    assert [(w["start_s"], w["requests"]) for w in windows] == [(0.0, 2), (10.0, 2)]


def test_seen_gives_first_and_last_answer_of_each_version() -> None:
    spans = loadgen.seen([_ok(1.0), _ok(2.0, version="2"), _ok(3.0), _ok(4.0, version="2")])
    assert spans["versions"] == {
        "1": {"first_s": 1.0, "last_s": 3.0},
        "2": {"first_s": 2.0, "last_s": 4.0},
    }


def test_bodies_are_deterministic_known_customers() -> None:
    config = LoadConfig(url="http://x", rate=1, duration_s=1, customers=10, first_customer=1000)
    first = [loadgen.Bodies(config).make(f"r-{i}") for i in range(3)]
    assert first == [loadgen.Bodies(config).make(f"r-{i}") for i in range(3)]
    customers = {loadgen.Bodies(config).make("r")["instances"][0]["customer_id"]}
    assert customers <= set(range(1000, 1010))


def test_feature_bodies_ask_feast_serve_for_the_same_customers() -> None:
    refs = ("fv:a", "fv:b")
    config = LoadConfig(url="http://x", rate=1, duration_s=1, customers=10, features=refs)
    plain = LoadConfig(url="http://x", rate=1, duration_s=1, customers=10)
    body = loadgen.Bodies(config).make("r-0")
    assert body == {
        "features": ["fv:a", "fv:b"],
        "entities": {
            "customer_id": [loadgen.Bodies(plain).make("r-0")["instances"][0]["customer_id"]]
        },
    }
    assert loadgen.parse_args(["http://x", "--features", "fv:a,fv:b"])[0].features == refs


def _load(outcomes: list[Outcome], config: soak.SoakConfig) -> dict:
    return loadgen.report(
        LoadConfig(url="u", rate=config.rate, duration_s=config.duration_s), [], outcomes, 60.0
    )


def test_soak_report_splits_the_run_at_the_faults() -> None:
    config = soak.SoakConfig(rate=1, duration_s=60, window_s=10)
    outcomes = [_ok(t) for t in range(20)] + [_ok(t, version="2") for t in range(20, 60)]
    outcomes[41] = _ok(41, version="rule", route="fallback")  # during the Redis outage
    samples = [[0.0, 100.0], [6.0, 110.0], [60.0, 115.0]]
    log = {"rows": 60, "unique_request_ids": 60}
    result = soak.summarize(config, _load(outcomes, config), samples, EVENTS, log)
    assert result["alias_swap"]["versions_before"] == {"1": 20}
    assert result["alias_swap"]["versions_after"] == {"2": 29, "rule": 1}
    assert result["redis_restart"]["fallbacks_during_outage"] == 1
    assert result["redis_restart"]["fallbacks_elsewhere"] == 0
    assert result["memory"]["growth_mb"] == 5.0  # from the first sample after warm-up (6 s)
    assert result["prediction_log"]["lost"] == 0
    assert all(result["met"].values())


def test_soak_report_counts_a_missing_log_row_as_lost() -> None:
    config = soak.SoakConfig(rate=1, duration_s=60, window_s=10)
    load = _load([_ok(t) for t in range(60)], config)
    result = soak.summarize(
        config, load, [[0.0, 1.0]], EVENTS, {"rows": 59, "unique_request_ids": 59}
    )
    assert result["prediction_log"]["lost"] == 1
    assert result["met"]["lost_rows"] is False


# ---- the HTTP client, against a scripted server on a loopback socket ---------------------------


async def _serve(answers: list[bytes]) -> tuple[asyncio.Server, list[bytes], int]:
    """A server that reads one request per answer, in order, over whatever connections come;
    returns it, the requests it read, and its port."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            requests.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, requests, server.sockets[0].getsockname()[1]


def test_client_reads_sized_and_chunked_answers_over_one_kept_alive_connection() -> None:
    sized = b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}'
    chunked = (
        b'HTTP/1.1 422 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"b\r\n4\r\n":2}\r\n0\r\n\r\n'
    )

    async def scenario() -> tuple[list, list[bytes]]:
        server, requests, port = await _serve([sized, chunked])
        client = loadgen.Client(f"http://127.0.0.1:{port}/predict", 4, 5.0)
        answers = [await client.post(b'{"x":1}'), await client.post(b"{}")]
        opened = len(client._open)
        await client.close()
        server.close()
        return [*answers, opened], requests

    (first, second, opened), requests = asyncio.run(scenario())
    assert first == (200, b'{"a":1}')
    assert second == (422, b'{"b":2}')
    assert opened == 1  # the second request reused the first's connection
    assert requests[0].startswith(b"POST /predict HTTP/1.1\r\n")
    assert requests[0].endswith(b'{"x":1}')


def test_client_opens_a_new_connection_after_the_server_closes_one() -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"

    async def scenario() -> list:
        server, _, port = await _serve([closing, closing])
        client = loadgen.Client(f"http://127.0.0.1:{port}/p", 4, 5.0)
        answers = [await client.post(b"{}"), await client.post(b"{}")]
        await client.close()
        server.close()
        return answers

    assert asyncio.run(scenario()) == [(200, b"{}"), (200, b"{}")]


def test_a_refused_connection_is_an_error_outcome_not_a_crash() -> None:
    async def scenario() -> Outcome:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens on the port now
        client = loadgen.Client(f"http://127.0.0.1:{port}/predict", 1, 5.0)
        return await loadgen._send(client, {"instances": []}, 0.0, 0.0)

    outcome = asyncio.run(scenario())
    assert outcome.status == 0
    assert outcome.error == "ConnectionRefusedError"


def test_client_refuses_urls_it_cannot_speak() -> None:
    with pytest.raises(ValueError, match="only plain http"):
        loadgen.Client("https://example.org/predict", 1, 1.0)
