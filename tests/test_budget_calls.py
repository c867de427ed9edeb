"""The cost cap of multi_process_one, amulti_process_one and the batched calls: the same hard
cap as JSONL jobs, through the public API and the fake server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import server_cost

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchError,
    BudgetReachedError,
    ChatCompletion,
    ChatModel,
    CostMeter,
    CostUnknownError,
    RequestCache,
    amulti_process_one,
    config_from_mapping,
    multi_process_one,
)
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = ["sk-capcall-aaaaaaaaaaaaaa0001", "sk-capcall-aaaaaaaaaaaaaa0002"]
MODEL = "gpt-4o-mini"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, seed=5) as fake:
        yield fake


@pytest.fixture
def manager(server: FakeOpenAIServer) -> Iterator[APIKeyManager]:
    config = config_from_mapping({"api_keys": KEYS, "api_base": server.base_url})
    with APIKeyManager(config=config, make_default=False) as pool:
        yield pool


def data(count: int) -> list[tuple[str, str]]:
    return [("You answer briefly. " * 3, f"question {i} " * 3) for i in range(count)]


def test_multi_process_one_stops_at_the_cap_and_returns_budget_errors(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    server.latency, server.jitter = 0.01, 0.01  # requests overlap
    cap = 0.0004
    meter = CostMeter(cap)
    results = multi_process_one(
        data(60), ChatModel, model=MODEL, max_tokens=50, manager=manager, threads=20,
        on_error="return", progress=False, meter=meter,
    )  # fmt: skip
    refused = [r for r in results if isinstance(r, BudgetReachedError)]
    answered = [r for r in results if isinstance(r, str)]
    assert refused and answered and len(refused) + len(answered) == 60
    assert server.total().requests == len(answered)  # nothing refused was sent
    assert server_cost(server) <= Decimal(str(cap))
    assert meter.reached
    report = meter.ledger.report()
    assert report.total.requests == len(answered)
    assert report.total.cost == pytest.approx(float(server_cost(server)), rel=1e-9)


def test_multi_process_one_raises_a_batch_error_holding_the_answers(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    with pytest.raises(BatchError) as caught:
        multi_process_one(
            data(20), ChatModel, model=MODEL, max_tokens=50, manager=manager, threads=1,
            progress=False, max_cost=0.0001,
        )  # fmt: skip
    error = caught.value
    assert all(isinstance(e, BudgetReachedError) for e in error.errors.values())
    answered = [r for r in error.results if r is not None]
    assert answered and len(answered) + len(error.errors) == 20
    assert server.total().requests == len(answered)
    assert server_cost(server) <= Decimal("0.0001")


def test_amulti_process_one_keeps_the_cap_with_many_tasks(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    server.latency, server.jitter = 0.02, 0.01  # 100 tasks in flight together
    cap = 0.0005
    results = asyncio.run(
        amulti_process_one(
            data(100), ChatModel, model=MODEL, max_tokens=50, manager=manager, concurrency=100,
            on_error="return", progress=False, max_cost=cap,
        )
    )  # fmt: skip
    refused = sum(isinstance(r, BudgetReachedError) for r in results)
    assert 0 < refused < 100
    assert server.total().requests == 100 - refused
    assert server_cost(server) <= Decimal(str(cap))


def test_a_model_without_a_price_is_refused_under_a_cap(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    results = multi_process_one(
        data(3), ChatModel, model="my-private-model", manager=manager, threads=2,
        on_error="return", progress=False, max_cost=1.0,
    )  # fmt: skip
    assert all(isinstance(r, CostUnknownError) for r in results)
    assert server.total().requests == 0


def test_max_cost_and_a_meter_together_are_refused(manager: APIKeyManager) -> None:
    with pytest.raises(ValueError, match="not both"):
        multi_process_one(
            data(1), ChatModel, manager=manager, max_cost=1.0, meter=CostMeter(), progress=False
        )


def test_batched_create_takes_a_cap(manager: APIKeyManager, server: FakeOpenAIServer) -> None:
    messages = [[{"role": "user", "content": f"question {i} " * 5}] for i in range(30)]
    results = ChatCompletion.create(
        model=MODEL, messages=messages, max_tokens=50, opt_manager=manager,
        opt_on_error="return", opt_max_cost=0.0002, no_tqdm=True,
    )  # fmt: skip
    refused = sum(isinstance(r, BudgetReachedError) for r in results)
    assert 0 < refused < 30
    assert server.total().requests == 30 - refused
    assert server_cost(server) <= Decimal("0.0002")


def test_a_capped_call_run_again_with_a_higher_cap_sends_only_what_is_left(
    manager: APIKeyManager, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    items = data(30)
    with RequestCache(tmp_path / "cache.sqlite") as cache:
        first = multi_process_one(
            items, ChatModel, model=MODEL, max_tokens=50, manager=manager, threads=4,
            cache=cache, on_error="return", progress=False, max_cost=0.0002,
        )  # fmt: skip
        answered = [i for i, r in enumerate(first) if isinstance(r, str)]
        assert answered and len(answered) < 30
        assert server.total().requests == len(answered)
        again = multi_process_one(
            items, ChatModel, model=MODEL, max_tokens=50, manager=manager, threads=4,
            cache=cache, progress=False, max_cost=1.0,
        )  # fmt: skip
    assert server.total().requests == 30  # each item sent once over both runs
    assert all(isinstance(r, str) for r in again)
    assert [again[i] for i in answered] == [first[i] for i in answered]
