"""The request engine end to end: the public API against the fake OpenAI server."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    CompletionModel,
    EmbeddingModel,
    Gpt35Turbo,
    KeyState,
    NoKeysAvailableError,
    PoolOptions,
    RequestFailedError,
    RetryPolicy,
    request_openai_api,
)
from openai_parallel_toolkit.testing import FakeClock, FakeOpenAIServer

KEYS = [f"sk-proj-{name}{'x' * 40}{i:04d}" for i, name in enumerate(["alpha", "bravo", "charl"])]
FAST = RetryPolicy(max_retries=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS) as fake:
        yield fake


def pool(server: FakeOpenAIServer, keys: list[str] = KEYS, **kwargs: object) -> APIKeyManager:
    return APIKeyManager(
        api_keys=[{"api_key": k, "api_base": server.base_url} for k in keys],
        make_default=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_chat_result_and_rotation_over_keys(server: FakeOpenAIServer) -> None:
    manager = pool(server)
    for i in range(30):
        model = Gpt35Turbo(content=f"item {i}", prompt="be brief", temperature=0.7)
        assert request_openai_api(model, manager=manager) == f"echo: item {i}"
    counts = {key: c.successes for key, c in server.counters().items()}
    assert counts == {key: 10 for key in KEYS}
    stats = manager.statistics()
    assert stats.successes == 30 and stats.rate_limited == 0
    assert stats.tokens > 0


def test_other_models_and_raw_response(server: FakeOpenAIServer) -> None:
    manager = pool(server)
    raw = request_openai_api(ChatModel(content="hi", model="gpt-4o"), manager=manager, raw=True)
    assert raw.choices[0].message.content == "echo: hi"
    assert raw.usage.total_tokens > 0
    assert request_openai_api(CompletionModel("once"), manager=manager) == "echo: once"
    vectors = request_openai_api(EmbeddingModel(["a", "b", "c"]), manager=manager)
    assert len(vectors) == 3 and all(isinstance(v[0], float) for v in vectors)
    assert vectors[0] != vectors[1]
    single = request_openai_api(EmbeddingModel("a"), manager=manager)
    assert single == vectors[0]


def test_dead_keys_are_removed_and_the_run_finishes(server: FakeOpenAIServer) -> None:
    server.set_fault(KEYS[0], "insufficient_quota")
    server.set_fault(KEYS[1], "invalid_api_key")
    manager = pool(server)
    results = [request_openai_api(ChatModel(content=str(i)), manager=manager) for i in range(20)]
    assert results == [f"echo: {i}" for i in range(20)]
    counters = server.counters()
    # Each dead key was removed at its first failure.
    assert counters[KEYS[0]].requests == 1
    assert counters[KEYS[1]].requests == 1
    assert counters[KEYS[2]].successes == 20
    states = {s.key: s for s in manager.statistics().keys}
    quota, invalid, good = (states[manager.config.keys[i].masked_key] for i in range(3))
    assert quota.state is KeyState.REMOVED and "insufficient_quota" in (quota.removed_reason or "")
    assert invalid.state is KeyState.REMOVED and "401" in (invalid.removed_reason or "")
    assert good.state is KeyState.ACTIVE


def test_rate_limit_cools_the_group_and_reroutes(server: FakeOpenAIServer) -> None:
    clock = FakeClock()
    manager = pool(server, keys=KEYS[:2], options=PoolOptions(clock=clock))
    server.set_fault(KEYS[0], "rate_limit", times=1)  # answers 429 with retry-after-ms: 1000
    results = [request_openai_api(ChatModel(content=str(i)), manager=manager) for i in range(6)]
    assert results == [f"echo: {i}" for i in range(6)]
    # Re-routed at once to the other key instead of waiting out the cool-down: the pool never
    # waited, and its clock never moved past the cool-down (the key still cools down).
    assert clock.sleeps == []
    stats = {s.key: s for s in manager.statistics().keys}
    limited = stats[manager.config.keys[0].masked_key]
    assert limited.rate_limited == 1
    assert limited.state is KeyState.COOLING_DOWN
    assert server.counters()[KEYS[1]].successes >= 5


def test_server_errors_are_retried(server: FakeOpenAIServer) -> None:
    manager = pool(server, keys=KEYS[:1])
    server.set_fault(KEYS[0], "server_error", times=2)
    assert request_openai_api(ChatModel(content="x"), manager=manager, policy=FAST) == "echo: x"
    assert server.counters()[KEYS[0]].requests == 3
    # Without enough budget the error surfaces, never None.
    server.set_fault(KEYS[0], "server_error", times=5)
    with pytest.raises(RequestFailedError) as info:
        request_openai_api(ChatModel(content="y"), manager=manager, policy=FAST)
    assert info.value.status_code == 500
    assert info.value.attempts == 4


def test_dropped_connection_is_retried(server: FakeOpenAIServer) -> None:
    manager = pool(server, keys=KEYS[:1])
    server.set_fault(KEYS[0], "drop", times=1)
    assert request_openai_api(ChatModel(content="x"), manager=manager, policy=FAST) == "echo: x"
    assert server.counters()[KEYS[0]].requests == 2


def test_timeout_is_retried_on_time(server: FakeOpenAIServer) -> None:
    manager = pool(server, keys=KEYS[:1], options=PoolOptions(timeout=0.3))
    server.slow_seconds = 30.0
    server.set_fault(KEYS[0], "slow", times=1)
    assert request_openai_api(ChatModel(content="x"), manager=manager, policy=FAST) == "echo: x"
    # Retried on time: answered while the first attempt is still held by the server (30 s).
    assert server.in_flight(KEYS[0]) == 1
    assert server.counters()[KEYS[0]].requests == 2
    assert server.counters()[KEYS[0]].successes == 1


def test_bad_request_fails_fast(server: FakeOpenAIServer) -> None:
    manager = pool(server)
    with pytest.raises(RequestFailedError) as info:
        request_openai_api(ChatModel(content="[[context_length_exceeded]]"), manager=manager)
    assert info.value.status_code == 400
    assert "context_length_exceeded" in str(info.value)
    assert server.total().requests == 1


def test_all_keys_dead_raises_quickly_with_reasons(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for key in KEYS:
        server.set_fault(key, "invalid_api_key")
    clock = FakeClock()
    manager = pool(server, options=PoolOptions(clock=clock))
    with pytest.raises(NoKeysAvailableError) as info:
        request_openai_api(ChatModel(content="x"), manager=manager)
    # Quickly: one request per key, each removed at its first 401, and no waiting at all.
    assert server.total().requests == 3 and clock.sleeps == []
    message = str(info.value)
    for key in manager.config.keys:
        assert key.masked_key in message
    assert len(info.value.reasons) == 3
    text = message + caplog.text + repr(manager) + repr(manager.statistics())
    for key in KEYS:
        assert key not in text


def test_no_full_key_in_any_log_output(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, openai's and httpx's included
    server.set_fault(KEYS[0], "insufficient_quota")
    server.set_fault(KEYS[1], "rate_limit", times=1)
    manager = pool(server)
    for i in range(5):
        request_openai_api(ChatModel(content=str(i)), manager=manager)
    with pytest.raises(RequestFailedError) as info:
        request_openai_api(ChatModel(content="[[context_length_exceeded]]"), manager=manager)
    assert caplog.records, "expected log output to inspect"
    text = caplog.text + str(info.value) + repr(manager)
    for key in KEYS:
        assert key not in text
        assert key[3:-4] not in text


def test_headers_teach_unknown_limits(server: FakeOpenAIServer) -> None:
    with FakeOpenAIServer(keys=KEYS, rpm=600, tpm=60_000) as limited:
        manager = pool(limited, keys=KEYS[:1])
        assert manager.statistics().keys[0].requests_per_min is None
        request_openai_api(ChatModel(content="x"), manager=manager)
        learned = manager.statistics().keys[0]
        assert learned.requests_per_min == 600
        assert learned.tokens_per_min == 60_000


def test_seed_config_file_sets_the_default_pool(server: FakeOpenAIServer, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    first = APIKeyManager(config_path=str(config), set_api_base=True)
    model = Gpt35Turbo(content="hello world", prompt="", temperature=0.7)
    assert request_openai_api(model) == "echo: hello world"
    assert request_openai_api(model, config_path=str(config)) == "echo: hello world"
    assert first.statistics().successes == 2
    # A second call with another config replaces the default.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"api_keys": KEYS[:1], "api_base": server.base_url}))
    second = APIKeyManager(config_path=str(other))
    request_openai_api(model)
    assert second.statistics().successes == 1
    assert first.statistics().successes == 2
