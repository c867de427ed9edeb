"""A run's figures beside its progress bar: `RunWatch` (rates over the recent past, on a fake
clock) and the bars of multi_process_one, amulti_process_one, the batched calls and the JSONL
job, read from a captured terminal."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import InProcessCli

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatCompletion,
    ChatModel,
    CostMeter,
    PoolOptions,
    amulti_process_one,
    config_from_mapping,
    multi_process_one,
    request_openai_api,
)
from openai_parallel_toolkit.runfigures import Binding
from openai_parallel_toolkit.runwatch import RATE_WINDOW_SECONDS, RunWatch
from openai_parallel_toolkit.testing import FakeClock, FakeOpenAIServer

KEYS = ["sk-watch-aaaaaaaaaaaaaaaa0001", "sk-watch-aaaaaaaaaaaaaaaa0002"]
MODEL = "gpt-4o-mini"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, seed=3) as fake:
        yield fake


@pytest.fixture
def manager(server: FakeOpenAIServer) -> Iterator[APIKeyManager]:
    config = config_from_mapping({"api_keys": KEYS, "api_base": server.base_url})
    with APIKeyManager(config=config, make_default=False) as pool:
        yield pool


def ask(manager: APIKeyManager, meter: CostMeter, count: int) -> None:
    for i in range(count):
        model = ChatModel(prompt="Be brief.", content=f"q{i}", model=MODEL, max_tokens=5)
        request_openai_api(model, manager=manager, cache=False, meter=meter)


def test_rates_are_those_of_the_last_window_and_counts_those_of_the_run(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    clock = FakeClock()
    meter = CostMeter()
    watch = RunWatch(manager, 20, ledger=meter.ledger, workers=lambda: 4, clock=clock.monotonic)
    ask(manager, meter, 10)
    clock.advance(5.0)
    early = watch.figures(10, 0)
    assert early.requests_per_s == pytest.approx(10 / 5.0)  # the run so far: 5 s
    assert early.tokens_per_s > 0
    assert early.cost is not None and early.cost > 0
    assert early.projected_cost == pytest.approx(early.cost * 2)  # 10 of 20 done
    # Later, idle for longer than a window: the rate is today's (none), the counts the run's.
    for _ in range(4):
        clock.advance(RATE_WINDOW_SECONDS / 2)
        watch.figures(10, 0)
    idle = watch.figures(10, 0)
    assert idle.requests_per_s == 0 and idle.tokens_per_s == 0
    assert idle.elapsed == pytest.approx(5.0 + 2 * RATE_WINDOW_SECONDS)
    assert idle.cost == early.cost
    # Busy again: 6 answers within the last window's span are what the rate shows.
    ask(manager, meter, 6)
    clock.advance(RATE_WINDOW_SECONDS / 2)
    busy = watch.figures(16, 0)
    assert busy.requests_per_s == pytest.approx(6 / RATE_WINDOW_SECONDS)
    assert busy.finished == 16 and server.total().requests == 16


def test_rate_limited_answers_count_from_the_start_of_the_run(server: FakeOpenAIServer) -> None:
    clock = FakeClock()  # the pool's too: its wait after the 429 passes at once
    config = config_from_mapping({"api_keys": KEYS, "api_base": server.base_url})
    server.set_fault("*", "rate_limit", times=1)
    with APIKeyManager(config=config, make_default=False, options=PoolOptions(clock=clock)) as pool:
        meter = CostMeter()
        watch = RunWatch(pool, 3, ledger=meter.ledger, clock=clock.monotonic)
        ask(pool, meter, 3)
        clock.advance(1.0)
        assert watch.figures(3, 0).rate_limited == 1
        clock.advance(3 * RATE_WINDOW_SECONDS)
        figures = watch.figures(3, 0)
    assert figures.rate_limited == 1 and figures.requests_per_s == 0
    assert server.total().requests == 4


def test_a_process_busy_on_the_cpu_is_named_as_what_binds(manager: APIKeyManager) -> None:
    clock, cpu = FakeClock(), FakeClock(0.0)
    watch = RunWatch(
        manager, 10, workers=lambda: 100, clock=clock.monotonic, cpu_clock=cpu.monotonic
    )
    clock.advance(1.0)
    cpu.advance(0.3)
    assert watch.figures(1, 0).binding is None  # nothing waits, the CPU is mostly idle
    clock.advance(RATE_WINDOW_SECONDS)
    cpu.advance(0.95 * RATE_WINDOW_SECONDS)
    figures = watch.figures(2, 0)
    assert figures.binding == Binding.CPU
    assert "limited by CPU (this process is busy" in figures.status_text()


def bar_lines(err: str) -> list[str]:
    """What a terminal shows: each carriage return or newline starts a line again."""
    return [segment for segment in re.split(r"[\r\n]", err) if segment.strip()]


def check_figures(line: str, *, failed: int) -> None:
    """A bar's final line carries the run's figures."""
    assert re.search(r"req_s=\d+\.\d", line), line
    assert re.search(r"tok_s=\d+", line), line
    assert "r429=0" in line and f"failed={failed}" in line, line
    assert "keys=2/0/0" in line, line  # healthy / cooling / removed
    assert re.search(r"cost=\$\d+\.\d+", line), line


def data(count: int) -> list[tuple[str, str]]:
    return [("Be brief.", f"question {i}") for i in range(count)]


def test_multi_process_one_bar_shows_the_run_figures(
    manager: APIKeyManager, server: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    results = multi_process_one(
        data(12), ChatModel, model=MODEL, max_tokens=5, manager=manager, cache=False,
        progress=True,
    )  # fmt: skip
    assert len(results) == 12 and server.total().requests == 12
    lines = bar_lines(capsys.readouterr().err)
    assert lines[-1].startswith("ChatModel: 100%")
    check_figures(lines[-1], failed=0)


def test_amulti_process_one_bar_counts_failures(
    manager: APIKeyManager, capsys: pytest.CaptureFixture[str]
) -> None:
    items = data(6) + [("Be brief.", "[[context_length_exceeded]]")] * 2  # two 400s
    results = asyncio.run(
        amulti_process_one(
            items, ChatModel, model=MODEL, max_tokens=5, manager=manager, cache=False,
            progress=True, on_error="return",
        )
    )  # fmt: skip
    assert sum(isinstance(r, Exception) for r in results) == 2
    check_figures(bar_lines(capsys.readouterr().err)[-1], failed=2)


def test_batched_call_bar_shows_the_run_figures(
    manager: APIKeyManager, capsys: pytest.CaptureFixture[str]
) -> None:
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    answers = ChatCompletion.create(
        model=MODEL, messages=conversations, max_tokens=5, opt_manager=manager
    )
    assert len(answers) == 6
    check_figures(bar_lines(capsys.readouterr().err)[-1], failed=0)


def test_jsonl_job_bar_on_a_terminal_shows_the_run_figures(
    run_cli: InProcessCli,
    server: FakeOpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "keys.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    requests = tmp_path / "in.jsonl"
    body = {"model": MODEL, "max_tokens": 5}
    requests.write_text(
        "".join(
            json.dumps({**body, "messages": [{"role": "user", "content": f"q{i}"}]}) + "\n"
            for i in range(10)
        )
    )
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar, no lines
    result = run_cli("run", str(requests), "-o", str(tmp_path / "out.jsonl"),
                     "--config", str(config))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "status: " not in result.stderr
    lines = [line for line in bar_lines(result.stderr) if line.startswith("requests:")]
    assert lines and "10/10" in lines[-1]
    check_figures(lines[-1], failed=0)
