"""A small reader of Prometheus' HTTP API: instant queries and firing alerts.

Used where one process's `/metrics` is not the truth: the canary judging every replica of the
service, and the error-budget report. Standard library only (urllib); errors name the server and
the query, and say what to check.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlre.errors import MlreError, ServiceUnavailableError


@dataclass(frozen=True)
class Sample:
    """One series of an instant-query result: its labels and value."""

    labels: dict[str, str]
    value: float


Query = Callable[[str], list[Sample]]


class PrometheusError(MlreError):
    """Prometheus answered, but refused the query (bad PromQL, unknown function, ...)."""


def _get(base_url: str, path: str, params: dict[str, str], timeout_s: float) -> Any:
    url = f"{base_url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus' own error message
        body = json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ServiceUnavailableError(
            f"Prometheus at {base_url} did not answer ({exc}); check that it runs (mlre status) "
            "or point MLRE_PROMETHEUS_URL at the right server."
        ) from exc
    if body.get("status") != "success":
        raise PrometheusError(
            f"Prometheus at {base_url} refused {params.get('query', path)!r}: "
            f"{body.get('errorType', 'error')}: {body.get('error', body)}"
        )
    return body["data"]


def instant_query(
    base_url: str, promql: str, *, at: datetime | None = None, timeout_s: float = 10.0
) -> list[Sample]:
    """The vector (or scalar) a PromQL expression evaluates to now (or `at`)."""
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at.timestamp():.3f}"
    data = _get(base_url, "/api/v1/query", params, timeout_s)
    if data["resultType"] == "scalar":
        return [Sample({}, float(data["result"][1]))]
    return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]


def querier(base_url: str, *, timeout_s: float = 10.0) -> Query:
    """`instant_query` bound to one server: what the pure readers take."""
    return lambda promql: instant_query(base_url, promql, timeout_s=timeout_s)


def scalar(samples: list[Sample], default: float = math.nan) -> float:
    """The value of a one-series result (the sum of several), `default` for no series."""
    return sum(s.value for s in samples) if samples else default


def firing_alerts(base_url: str, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Alerts Prometheus holds now (pending or firing), with labels and annotations."""
    return list(_get(base_url, "/api/v1/alerts", {}, timeout_s)["alerts"])


def label_value(value: str) -> str:
    """A string safe inside a PromQL label matcher's double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
