"""multi_process_one: order, argument mapping, partial failures, the cache."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchError,
    ChatModel,
    Gpt35Turbo,
    OpenAIModel,
    PoolOptions,
    RequestCache,
    RequestFailedError,
    default_concurrency,
    multi_process_one,
)
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = [f"sk-multi-{'m' * 30}-{i:04d}" for i in range(4)]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    # Random latency makes items finish out of order.
    with FakeOpenAIServer(keys=KEYS, latency=0.03, jitter=0.03, seed=7) as fake:
        yield fake


@pytest.fixture
def manager(server: FakeOpenAIServer) -> APIKeyManager:
    return APIKeyManager(api_keys=[{"api_key": k, "api_base": server.base_url} for k in KEYS])


def test_seed_call_keeps_input_order_under_random_latency(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    data = [(f"hello{i}", f"world {i}") for i in range(60)]
    results = multi_process_one(data=data, openai_model_class=Gpt35Turbo, temperature=0.7)
    assert results == [f"echo: world {i}" for i in range(60)]
    assert len(server.counters()) == 4  # spread over every key
    bodies = [entry["body"] for entry in server.request_log()]
    assert all(body["temperature"] == 0.7 for body in bodies)
    assert {body["messages"][0]["content"] for body in bodies} == {f"hello{i}" for i in range(60)}


def test_more_tuple_values_fill_the_models_parameters_in_order(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    data = [("system", "content", 0.25)]
    assert multi_process_one(data, Gpt35Turbo, progress=False) == ["echo: content"]
    assert server.request_log()[-1]["body"]["temperature"] == 0.25

    class Tagged(OpenAIModel):
        def __init__(self, prompt: str, content: str, tag: str, suffix: str = "") -> None:
            self.model = ChatModel(content=f"{tag}:{content}{suffix}", prompt=prompt)

        def generate(self, client: Any) -> Any:
            return self.model.generate(client)

        def parse(self, response: Any) -> Any:
            return self.model.parse(response)

    results = multi_process_one([("p", "c", "T1"), ("p", "d", "T2")], Tagged, "!", progress=False)
    assert results == ["echo: T1:c!", "echo: T2:d!"]
    with pytest.raises(TypeError, match="takes 2 parameters after prompt and content"):
        multi_process_one([("p", "c", "T", "!", "extra")], Tagged)
    with pytest.raises(TypeError, match="given both"):
        multi_process_one([("p", "c", 0.5)], Gpt35Turbo, temperature=0.7)
    with pytest.raises(TypeError, match="tuple"):
        multi_process_one(["not a tuple"], Gpt35Turbo)


def test_a_failed_item_loses_nothing(manager: APIKeyManager, server: FakeOpenAIServer) -> None:
    data = [("p", f"item {i}") for i in range(20)]
    data[3] = ("p", "[[context_length_exceeded]]")
    data[11] = ("p", "again [[context_length_exceeded]]")
    with pytest.raises(BatchError) as info:
        multi_process_one(data, Gpt35Turbo, progress=False)
    error = info.value
    assert set(error.errors) == {3, 11}
    assert all(isinstance(e, RequestFailedError) for e in error.errors.values())
    assert error.results[3] is None and error.results[11] is None
    assert error.results[0] == "echo: item 0" and error.results[19] == "echo: item 19"
    assert server.total().successes == 18  # every other item finished
    assert "2 of 20 items failed" in str(error)

    nones = multi_process_one(data, Gpt35Turbo, on_error="none", progress=False)
    assert nones[3] is None and nones[4] == "echo: item 4"
    returned = multi_process_one(data, Gpt35Turbo, on_error="return", progress=False)
    assert isinstance(returned[11], RequestFailedError) and returned[12] == "echo: item 12"
    with pytest.raises(ValueError, match="on_error"):
        multi_process_one(data, Gpt35Turbo, on_error="ignore")  # type: ignore[arg-type]


def test_standalone_cache_makes_the_rerun_free(
    manager: APIKeyManager, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    data = [("p", f"item {i}") for i in range(100)]
    data[50] = ("p", "item 50 [[context_length_exceeded]]")
    with RequestCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(BatchError):
            multi_process_one(data, Gpt35Turbo, cache=cache, progress=False)
        data[50] = ("p", "item 50")
        server.reset_counters()
        results = multi_process_one(data, Gpt35Turbo, cache=cache, progress=False)
    assert results == [f"echo: item {i}" for i in range(100)]
    assert server.total().requests == 1


def test_default_concurrency_follows_the_pools_limits() -> None:
    def pool(entries: list[dict[str, Any]]) -> APIKeyManager:
        return APIKeyManager(
            api_keys=entries,
            make_default=False,
            options=PoolOptions(client_factory=lambda config, hook: object()),
        )

    unknown = pool([{"api_key": k} for k in KEYS])
    assert default_concurrency(unknown) == 32  # 8 per key with unknown limits
    fast = pool([{"api_key": k, "requests_per_min": 1200} for k in KEYS])
    assert default_concurrency(fast) == 160  # 4 x 20 req/s x 2 s
    many = pool([{"api_key": f"{k}-{i}", "requests_per_min": 6000} for k in KEYS for i in range(2)])
    assert default_concurrency(many) == 1024  # 8 x 100 req/s x 2 s = 1,600, capped
    shared = pool([{"api_key": k, "requests_per_min": 300, "limit_group": "p"} for k in KEYS])
    assert default_concurrency(shared) == 10  # one group: 5 req/s x 2 s
    slow = pool([{"api_key": KEYS[0], "requests_per_min": 30}])
    assert default_concurrency(slow) == 8


def test_requests_in_flight_follow_the_observed_response_time() -> None:
    from openai_parallel_toolkit.parallel import InFlightTarget
    from openai_parallel_toolkit.testing import FakeClock

    clock = FakeClock()
    keys = [f"sk-flight-{'f' * 20}{i:04d}" for i in range(10)]
    manager = APIKeyManager(
        api_keys=[{"api_key": key, "requests_per_min": 600} for key in keys],
        make_default=False,
        options=PoolOptions(clock=clock, client_factory=lambda config, hook: None),
    )
    assert default_concurrency(manager) == 200  # 100 requests/s x 2 s before any answer
    first = manager.acquire()
    clock.advance(4.0)  # no answer for 4 s: answers take at least that long, and more by
    assert manager.statistics().oldest_in_flight == pytest.approx(4.0)  # the next look
    assert default_concurrency(manager) == 450  # 100/s x (4 s + the 0.5 s until the next look)
    first.cancel()
    for _ in range(100):  # answers that take 5 s
        lease = manager.acquire()
        clock.advance(5.0)
        lease.succeed()
    assert manager.statistics().latency == pytest.approx(5.0)
    assert default_concurrency(manager) == 625  # 100/s x 6.25 s
    assert default_concurrency(manager, cap=300) == 300
    assert InFlightTarget(manager, cap=500)() == 500
    # A slow answer still out (jitter) widens the window, up to twice the average time.
    slow = manager.acquire()
    clock.advance(9.0)
    assert default_concurrency(manager) == 900  # 100/s x 9 s
    clock.advance(60.0)  # a hung request is no trend: 100/s x 2 x 5 s at most
    assert default_concurrency(manager) == 1000
    slow.succeed()


def test_a_warning_during_a_run_goes_above_the_progress_bar() -> None:
    """A warning logged while the bar is shown starts a line of its own (issue 13)."""
    code = (
        "import logging\n"
        "from openai_parallel_toolkit.parallel import parallel_map\n"
        "def work(item):\n"
        "    if item == 3:\n"
        "        logging.getLogger('somewhere').warning('WARNED-%s', item)\n"
        "    return item\n"
        "parallel_map(work, list(range(8)), threads=2, progress=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = result.stderr.replace("\r", "\n").splitlines()
    assert any(line.strip() == "WARNED-3" for line in lines), result.stderr
