"""Tokens and cost of runs, and the cost cap, through the public API and the fake server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import InProcessCli

from openai_parallel_toolkit import APIKeyManager, run_jsonl_job
from openai_parallel_toolkit.prices import Usage, price_of
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = ["sk-cost-aaaaaaaaaaaaaaaa0001", "sk-cost-aaaaaaaaaaaaaaaa0002"]
MODEL = "gpt-4o-mini"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, seed=3) as fake:
        yield fake


def manager_for(server: FakeOpenAIServer, prices: dict[str, object] | None = None) -> APIKeyManager:
    from openai_parallel_toolkit import config_from_mapping

    data: dict[str, object] = {"api_keys": KEYS, "api_base": server.base_url}
    if prices:
        data["prices"] = prices
    return APIKeyManager(config=config_from_mapping(data), make_default=False)


def write_requests(path: Path, count: int, model: str = MODEL, max_tokens: int = 50) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for i in range(count):
            body = {
                "model": model,
                "max_tokens": max_tokens,
                "messages": [
                    {"role": "system", "content": "You answer briefly and exactly. " * 4},
                    {"role": "user", "content": f"question number {i} " * 3},
                ],
            }
            file.write(json.dumps(body) + "\n")
    return path


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_cost(server: FakeOpenAIServer) -> Decimal:
    """The run's cost from the server's own token counts and the price table."""
    total = server.total()
    price = price_of(MODEL)
    assert price is not None
    return price.cost(Usage(total.prompt_tokens, total.completion_tokens, total.cached_tokens))


def test_cost_of_a_known_run_matches_the_price_table(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 40)
    output = tmp_path / "out.jsonl"
    with manager_for(server) as manager:
        summary = run_jsonl_job(requests, output, manager=manager, threads=4, progress=False)
        stats = manager.statistics()
    total = server.total()
    assert summary.ok and total.requests == 40
    assert total.cached_tokens > 0  # the repeated system prompt is a cache hit
    expected = float(expected_cost(server))
    report = summary.usage
    assert report.total.cost == pytest.approx(expected, rel=1e-9)
    assert report.total.prompt_tokens == total.prompt_tokens
    assert report.total.completion_tokens == total.completion_tokens
    assert report.total.cached_tokens == total.cached_tokens
    assert [row.name for row in report.by_model] == [MODEL]
    # Per key, masked as the pool shows keys; their costs add up to the total.
    assert {row.name for row in report.by_key} == {key.key for key in stats.keys}
    assert sum(row.cost or 0 for row in report.by_key) == pytest.approx(expected, rel=1e-9)
    # The pool's statistics tell the same, per key and in all.
    assert stats.usage.total.cost == pytest.approx(expected, rel=1e-9)
    assert sum(key.cost or 0 for key in stats.keys) == pytest.approx(expected, rel=1e-9)
    assert sum(key.cached_tokens for key in stats.keys) == total.cached_tokens
    # Each result line carries its own cost beside the response's usage.
    price = price_of(MODEL)
    assert price is not None
    for record in lines(output):
        response = record["response"]
        usage = Usage.of(response)
        assert usage is not None
        assert record["cost"] == pytest.approx(float(price.cost(usage)), rel=1e-9)
    text = str(summary)
    assert MODEL in text and "cached" in text and "$" in text


def test_unknown_model_is_cost_unknown_never_a_number(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 3, model="my-private-model")
    output = tmp_path / "out.jsonl"
    with manager_for(server) as manager:
        summary = run_jsonl_job(requests, output, manager=manager, threads=2, progress=False)
        stats = manager.statistics()
    assert summary.ok
    assert all("cost" not in record for record in lines(output))
    assert summary.usage.total.cost is None
    assert summary.usage.by_model[0].cost is None
    assert summary.usage.total.prompt_tokens == server.total().prompt_tokens
    assert "cost unknown" in str(summary)
    assert stats.usage.total.cost is None


def test_config_price_override_prices_a_private_model(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 5, model="my-private-model")
    prices = {"my-private-model": {"input": 1, "output": 2, "cached_input": 0.5}}
    with manager_for(server, prices) as manager:
        summary = run_jsonl_job(
            requests, tmp_path / "out.jsonl", manager=manager, threads=1, progress=False
        )
    total = server.total()
    expected = (
        (total.prompt_tokens - total.cached_tokens) * 1
        + total.cached_tokens * 0.5
        + total.completion_tokens * 2
    ) / 1e6
    assert summary.usage.total.cost == pytest.approx(expected, rel=1e-9)


def run_args(requests: Path, output: Path, config: Path, *extra: str) -> list[str]:
    return ["run", str(requests), "-o", str(output), "--config", str(config), "--no-progress",
            *extra]  # fmt: skip


@pytest.fixture
def config(server: FakeOpenAIServer, tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    return path


def test_run_prints_tokens_and_cost_per_model_and_key(
    server: FakeOpenAIServer, config: Path, tmp_path: Path, run_cli: InProcessCli
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 6)
    result = run_cli(*run_args(requests, tmp_path / "out.jsonl", config))
    assert result.returncode == 0
    assert "model gpt-4o-mini: 6 requests" in result.stderr
    assert "key sk-...0001" in result.stderr and "$" in result.stderr
