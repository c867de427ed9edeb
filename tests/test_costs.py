"""Tokens and cost of runs, and the cost cap, through the public API and the fake server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import InProcessCli, server_cost

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
    expected = float(server_cost(server))
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


def test_cap_under_200_concurrent_requests_never_passes_the_budget(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    server.latency, server.jitter = 0.02, 0.01  # replies overlap: 200 tasks in flight at once
    requests = write_requests(tmp_path / "in.jsonl", 200)
    output = tmp_path / "out.jsonl"
    cap = 0.002  # about a quarter of the job's worst case
    with manager_for(server) as manager:
        summary = run_jsonl_job(
            requests, output, manager=manager, threads=200, use_async=True, progress=False,
            max_cost=cap,
        )  # fmt: skip
    spent = server_cost(server)  # what the server's own counts cost
    assert spent <= Decimal(str(cap))
    assert summary.budget_reached and not summary.interrupted and not summary.ok
    assert 0 < summary.done < 200 and summary.failed == 0
    assert len(lines(output)) == summary.done == server.total().requests
    assert summary.usage.total.cost == pytest.approx(float(spent), rel=1e-9)
    assert "cost cap" in str(summary)

    # A re-run with a higher cap continues: the rest only, no request sent twice.
    with manager_for(server) as manager:
        again = run_jsonl_job(
            requests, output, manager=manager, threads=50, progress=False, max_cost=1.0
        )
    assert again.ok and again.skipped == summary.done
    assert again.done == 200 - summary.done
    assert server.total().requests == 200
    ids = [record["id"] for record in lines(output)]
    assert sorted(ids) == list(range(1, 201)) or sorted(ids) == list(range(200))


def test_cli_max_cost_exit_status_and_rerun(
    server: FakeOpenAIServer, config: Path, tmp_path: Path, run_cli: InProcessCli
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 30)
    output = tmp_path / "out.jsonl"
    capped = run_cli(*run_args(requests, output, config, "--max-cost", "0.0002", "--threads", "4"))
    assert capped.returncode == 3
    assert "cost cap" in capped.stderr and "higher --max-cost" in capped.stderr
    first = server.total().requests
    assert 0 < first < 30
    rest = run_cli(*run_args(requests, output, config, "--max-cost", "5"))
    assert rest.returncode == 0
    assert server.total().requests == 30 == len(lines(output))


def test_cap_refuses_a_model_without_a_price(server: FakeOpenAIServer, tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 2, model="my-private-model")
    output = tmp_path / "out.jsonl"
    with manager_for(server) as manager:
        summary = run_jsonl_job(
            requests, output, manager=manager, threads=1, progress=False, max_cost=1.0
        )
    assert summary.failed == 2 and server.total().requests == 0
    assert all("cost unknown" in record["error"]["message"] for record in lines(output))


def test_dry_run_sends_nothing(
    server: FakeOpenAIServer, config: Path, tmp_path: Path, run_cli: InProcessCli
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 10)
    output = tmp_path / "out.jsonl"
    result = run_cli(*run_args(requests, output, config, "--dry-run"))
    assert result.returncode == 0
    assert server.total().requests == 0 and not output.exists()
    assert "10 requests" in result.stderr and "at most $" in result.stderr
    # Without max_tokens the figure is an estimate, and it says so.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    (tmp_path / "open.jsonl").write_text(json.dumps(body) + "\n", encoding="utf-8")
    result = run_cli(*run_args(tmp_path / "open.jsonl", output, config, "--dry-run"))
    assert "an estimate" in result.stderr and server.total().requests == 0


def test_dry_run_needs_no_key(tmp_path: Path, run_cli: InProcessCli) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 3)
    output = tmp_path / "out.jsonl"
    result = run_cli("run", str(requests), "-o", str(output), "--dry-run")  # no OPENAI_* set
    assert result.returncode == 0, result.stderr
    assert "3 requests" in result.stderr and "at most $" in result.stderr
    assert not output.exists()
