"""GET /metrics of the proxy: scraped and parsed with Prometheus' own text parser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from conftest import openai_client
from prometheus_client.parser import text_string_to_metric_families

from openai_parallel_toolkit import APIKeyManager, PoolOptions
from openai_parallel_toolkit.asgi import BackgroundServer
from openai_parallel_toolkit.prices import Usage, price_of
from openai_parallel_toolkit.proxymetrics import group_label
from openai_parallel_toolkit.server import ProxyServer
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = [f"sk-metrics-{'m' * 28}-{i:04d}" for i in range(2)]
CLIENT_KEY = "proxy-metrics-client-key"
MODEL = "gpt-4o-mini"


@pytest.fixture
def proxy() -> Iterator[tuple[FakeOpenAIServer, APIKeyManager, str]]:
    with FakeOpenAIServer(keys=KEYS, seed=4) as upstream:
        manager = APIKeyManager(
            api_keys=[{"api_key": k, "api_base": upstream.base_url} for k in KEYS],
            make_default=False,
            options=PoolOptions(timeout=30.0),
        )
        server = ProxyServer(manager, CLIENT_KEY)
        with BackgroundServer(server.app, name="proxy") as running:
            yield upstream, manager, running.url


def scrape(url: str) -> dict[str, list[Any]]:
    """Every sample of GET /metrics, by sample name."""
    answer = httpx2.get(url + "/metrics", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert found, f"no sample {name} {labels}"
    return float(sum(found))


def test_metrics_count_requests_tokens_cost_and_the_pool(
    proxy: tuple[FakeOpenAIServer, APIKeyManager, str],
) -> None:
    upstream, manager, url = proxy
    client = openai_client(api_key=CLIENT_KEY, base_url=url + "/v1")
    for i in range(3):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=10
        )
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert httpx2.get(url + "/v1/chat/completions").status_code == 401  # no client key
    httpx2.get(url + "/nowhere/abc", headers={"authorization": f"Bearer {CLIENT_KEY}"})

    samples = scrape(url)
    chat = "/v1/chat/completions"
    assert value(samples, "openai_proxy_requests_total", http_route=chat,
                 http_response_status_code="200") == 3  # fmt: skip
    assert value(samples, "openai_proxy_request_failures_total", http_route=chat,
                 http_response_status_code="401") == 1  # fmt: skip
    assert value(samples, "openai_proxy_requests_total", http_route="other",
                 http_response_status_code="404") == 1  # fmt: skip
    assert value(samples, "http_server_request_duration_seconds_count", http_route=chat) == 4

    # Tokens and cost by model match what the upstream counted.
    log = upstream.request_log()
    assert sum(entry["path"].endswith("/chat/completions") for entry in log) == 3
    labels = {"gen_ai_request_model": MODEL, "gen_ai_operation_name": "chat"}
    prompt = value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **labels)
    output = value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **labels)
    assert value(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input",
                 **labels) == 3  # fmt: skip
    price = price_of(MODEL)
    assert price is not None
    cost = value(samples, "openai_proxy_cost_usd_total", gen_ai_request_model=MODEL)
    assert cost == pytest.approx(float(price.cost(Usage(int(prompt), int(output)))), rel=1e-6)
    assert value(samples, "gen_ai_client_token_usage_count", gen_ai_operation_name="embeddings",
                 gen_ai_token_type="input") == 1  # fmt: skip
    assert value(samples, "gen_ai_client_operation_duration_seconds_count",
                 gen_ai_operation_name="chat", error_type="") == 3  # fmt: skip
    assert value(samples, "openai_proxy_limiter_wait_seconds_count") >= 4

    # The pool: per key group (hashed) and per key (masked); no key in the clear.
    stats = manager.statistics()
    groups = {group_label(key.group) for key in stats.keys}
    states = samples["openai_proxy_key_state"]
    assert {s.labels["group"] for s in states} == groups
    assert all(s.labels["key"].startswith("sk-...") for s in states)
    active = [s for s in states if s.labels["state"] == "active"]
    assert len(active) == 2 and all(s.value == 1 for s in active)
    assert {s.labels["group"] for s in samples["openai_proxy_key_group_cooldown_seconds"]} == groups
    text = httpx2.get(url + "/metrics", headers={"authorization": f"Bearer {CLIENT_KEY}"}).text
    assert not any(key in text for key in KEYS)
    assert not any(key.group in text for key in stats.keys)


def test_metrics_show_a_removed_key_and_429s(
    proxy: tuple[FakeOpenAIServer, APIKeyManager, str],
) -> None:
    upstream, _, url = proxy
    upstream.set_fault(KEYS[0], "insufficient_quota")
    client = openai_client(api_key=CLIENT_KEY, base_url=url + "/v1")
    for i in range(4):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}])
    samples = scrape(url)
    removed = [
        s for s in samples["openai_proxy_key_state"]
        if s.labels["state"] == "removed" and s.value == 1
    ]  # fmt: skip
    assert len(removed) == 1
    assert value(samples, "gen_ai_client_operation_duration_seconds_count",
                 error_type="429") == 1  # fmt: skip


def test_metrics_need_the_client_key(proxy: tuple[FakeOpenAIServer, APIKeyManager, str]) -> None:
    _, _, url = proxy
    assert httpx2.get(url + "/metrics").status_code == 401
