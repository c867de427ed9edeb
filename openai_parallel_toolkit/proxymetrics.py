"""Prometheus metrics of the proxy (``GET /metrics``), with `prometheus-client`.

Names follow the OpenTelemetry semantic conventions where one exists, in their Prometheus
form: ``gen_ai_client_token_usage`` (tokens per upstream answer, by ``gen_ai_token_type``
input / output) and ``gen_ai_client_operation_duration_seconds`` (each upstream try) with the
``gen_ai_*`` attributes as labels, and ``http_server_request_duration_seconds`` for the
proxy's own answers. The rest have the ``openai_proxy_`` prefix: requests and failures by
route and status, cost by model, the limiter's wait, and the pool read at scrape time (per
key group, its name hashed: limits, remaining, utilisation, cool-down; per key, masked, its
state). Each proxy has its own registry: two in one process never mix their figures.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .keys import APIKeyManager
from .prices import Usage
from .stats import KeyState

__all__ = ["OPERATIONS", "MeteredApp", "ProxyMetrics", "group_label"]

# The OpenTelemetry GenAI operation name of each upstream path (``gen_ai.operation.name``).
OPERATIONS = {
    "/chat/completions": "chat",
    "/completions": "text_completion",
    "/embeddings": "embeddings",
    "/responses": "chat",
}
# Bucket boundaries the OpenTelemetry GenAI conventions advise for these histograms.
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                     40.96, 81.92)  # fmt: skip
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)  # fmt: skip
_PROVIDER = "openai"


def group_label(name: str) -> str:
    """A key group's label: a short hash, so that a project id or key never shows."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


class ProxyMetrics:
    """The metrics of one proxy over `manager`; `exposition()` renders them for a scrape."""

    def __init__(self, manager: APIKeyManager) -> None:
        self.manager = manager
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "openai_proxy_requests", "Requests answered by the proxy, by route and status.",
            ["http_route", "http_response_status_code"], registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "openai_proxy_request_failures",
            "Requests the proxy answered with a status >= 400, by route and status.",
            ["http_route", "http_response_status_code"], registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "http_server_request_duration_seconds", "Time the proxy took to answer (seconds).",
            ["http_request_method", "http_route", "http_response_status_code"],
            buckets=_DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Upstream latency of each try (seconds); error_type set when it failed.",
            ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_provider_name",
             "error_type"],
            buckets=_DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens per upstream answer, input or output.",
            ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_provider_name",
             "gen_ai_token_type"],
            buckets=_TOKEN_BUCKETS, registry=registry,
        )  # fmt: skip
        self.cost = Counter(
            "openai_proxy_cost_usd", "What the answers cost (USD), by model; priced ones only.",
            ["gen_ai_request_model"], registry=registry,
        )  # fmt: skip
        self.unpriced = Counter(
            "openai_proxy_unpriced_answers",
            "Answers whose model has no known price (their cost is not in the cost counter).",
            ["gen_ai_request_model"], registry=registry,
        )  # fmt: skip
        self.limiter_wait = Histogram(
            "openai_proxy_limiter_wait_seconds",
            "Time a request waited for a key's rate limit before each try (seconds).",
            buckets=_DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        registry.register(_PoolCollector(manager))

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def tried(self, path: str, model: str | None, seconds: float, error: str | None) -> None:
        """One upstream try of `path` for `model` took `seconds` (`error`: why it failed)."""
        operation = OPERATIONS.get(path)
        if operation is None:
            return  # not a generative operation (GET /models)
        self.operation_duration.labels(
            operation, model or "", _PROVIDER, error or ""
        ).observe(seconds)  # fmt: skip

    def answered(self, path: str, model: str | None, data: Any) -> None:
        """Count the tokens and cost of an upstream answer `data` (parsed JSON)."""
        operation = OPERATIONS.get(path)
        usage = Usage.of(data)
        if operation is None or usage is None:
            return
        name = model or (data.get("model") if isinstance(data, dict) else None) or ""
        labels = (operation, name, _PROVIDER)
        self.token_usage.labels(*labels, "input").observe(usage.prompt_tokens)
        if path != "/embeddings":
            self.token_usage.labels(*labels, "output").observe(usage.completion_tokens)
        cost = self.manager.prices.cost_of(name or None, usage)
        if cost is None:
            self.unpriced.labels(name).inc()
        else:
            self.cost.labels(name).inc(float(cost))

    def waited(self, seconds: float) -> None:
        """A request waited `seconds` for the limiter before a try."""
        self.limiter_wait.observe(seconds)


class _PoolCollector(Collector):
    """The pool's state, read at each scrape: per key group and per key."""

    def __init__(self, manager: APIKeyManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._manager.statistics()
        prefix = "openai_proxy_key_group_"
        families = {
            "limit_requests": GaugeMetricFamily(
                prefix + "limit_requests_per_minute",
                "Requests per minute the group may send (configured or learned).", labels=["group"],
            ),
            "limit_tokens": GaugeMetricFamily(
                prefix + "limit_tokens_per_minute",
                "Tokens per minute the group may send (configured or learned).", labels=["group"],
            ),
            "remaining_requests": GaugeMetricFamily(
                prefix + "remaining_requests", "Requests the group may send now.",
                labels=["group"],
            ),
            "remaining_tokens": GaugeMetricFamily(
                prefix + "remaining_tokens", "Tokens the group may send now.", labels=["group"],
            ),
            "utilisation": GaugeMetricFamily(
                prefix + "utilisation",
                "Share of the group's request budget in use now (1 - remaining / limit).",
                labels=["group"],
            ),
            "cooldown": GaugeMetricFamily(
                prefix + "cooldown_seconds",
                "Seconds left of the group's cool-down after a 429 (0: not cooling).",
                labels=["group"],
            ),
            "in_flight": GaugeMetricFamily(
                prefix + "in_flight", "Requests of the group sent and not answered yet.",
                labels=["group"],
            ),
        }  # fmt: skip
        rate_limited = GaugeMetricFamily(
            "openai_proxy_key_rate_limited", "429s each key got so far.", labels=["key", "group"]
        )
        state = GaugeMetricFamily(
            "openai_proxy_key_state",
            "1 for each key's state (active, cooling_down, removed).",
            labels=["key", "group", "state"],
        )
        seen: set[str] = set()
        for key in stats.keys:
            group = group_label(key.group)
            rate_limited.add_metric([key.key, group], key.rate_limited)
            for each in KeyState:
                state.add_metric([key.key, group, each.value], float(key.state is each))
            if key.group in seen:
                continue
            seen.add(key.group)
            families["cooldown"].add_metric([group], key.cooldown_remaining)
            families["in_flight"].add_metric([group], key.in_flight)
            for name, value in (
                ("limit_requests", key.requests_per_min),
                ("limit_tokens", key.tokens_per_min),
                ("remaining_requests", key.remaining_requests),
                ("remaining_tokens", key.remaining_tokens),
            ):
                if value is not None:
                    families[name].add_metric([group], value)
            if key.requests_per_min and key.remaining_requests is not None:
                used = 1.0 - key.remaining_requests / key.requests_per_min
                families["utilisation"].add_metric([group], max(0.0, min(1.0, used)))
        yield from families.values()
        yield rate_limited
        yield state


class MeteredApp:
    """ASGI middleware: counts and times every HTTP answer of `app` in `metrics`.

    The route label is the request's path when it is one of `routes`, else ``other``: a
    client probing random paths cannot blow up the number of series.
    """

    def __init__(self, app: ASGIApp, metrics: ProxyMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # what the client gets if the app fails before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"]
            route = path if path in self.routes else "other"
            code = str(status)
            self.metrics.requests.labels(route, code).inc()
            if status >= 400:
                self.metrics.failures.labels(route, code).inc()
            self.metrics.request_duration.labels(scope["method"], route, code).observe(
                time.monotonic() - started
            )
