"""The response cache shared through a real Redis server (`RequestCache.shared`): an answer
one worker paid for is not paid for again by another; entries expire; a Redis that stops
answering costs a run nothing but the cache."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    ConfigError,
    RequestCache,
    config_from_mapping,
    multi_process_one,
)
from openai_parallel_toolkit._store import responses
from openai_parallel_toolkit.testing import FakeOpenAIServer
from openai_parallel_toolkit.testing.redis_server import RedisServer

KEYS = ["sk-sharedcache-aaaaaaaaaaaaa0001", "sk-sharedcache-aaaaaaaaaaaaa0002"]
ITEMS = [("Be brief.", f"question {i}") for i in range(12)]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS) as fake:
        yield fake


def worker_pool(server: FakeOpenAIServer) -> APIKeyManager:
    """A pool of its own, as another process or machine would have."""
    config = config_from_mapping({"api_keys": KEYS, "api_base": server.base_url})
    return APIKeyManager(config=config, make_default=False)


def run(pool: APIKeyManager, cache: RequestCache) -> list[str]:
    return multi_process_one(ITEMS, ChatModel, manager=pool, cache=cache, progress=False)


def test_an_answer_one_worker_paid_for_is_not_paid_for_by_another(
    redis_server: RedisServer, server: FakeOpenAIServer, request: pytest.FixtureRequest
) -> None:
    url, namespace = redis_server.url, request.node.name
    with worker_pool(server) as one, RequestCache.shared(url, namespace=namespace) as a:
        first = run(one, a)
    assert server.total().requests == len(ITEMS)
    with worker_pool(server) as two, RequestCache.shared(url, namespace=namespace) as b:
        again = run(two, b)
        assert len(b) == len(ITEMS) and (b.hits, b.misses) == (len(ITEMS), 0)
    assert again == first and server.total().requests == len(ITEMS)
    # Another namespace is another cache.
    with worker_pool(server) as three, RequestCache.shared(redis_server.url, namespace="x") as c:
        run(three, c)
    assert server.total().requests == 2 * len(ITEMS)


def test_entries_expire_and_hold_no_api_key(
    redis_server: RedisServer, server: FakeOpenAIServer, request: pytest.FixtureRequest
) -> None:
    namespace = request.node.name
    cache = RequestCache.shared(redis_server.url, namespace=namespace, ttl_seconds=3600)
    with worker_pool(server) as pool, cache:
        run(pool, cache)
    client = redis.Redis.from_url(redis_server.url)
    names = list(client.scan_iter(match=f"{namespace}:response:*"))
    assert len(names) == len(ITEMS)
    for name in names:
        assert 0 < client.pttl(name) <= 3600 * 1000
        stored = name + (client.get(name) or b"")
        assert not any(key.encode() in stored or key[-8:].encode() in stored for key in KEYS)
    with RequestCache.shared(redis_server.url, namespace=namespace) as again:
        again.clear()
        assert len(again) == 0
    client.close()
    with pytest.raises(ValueError, match="ttl_seconds"):
        RequestCache.shared(redis_server.url, ttl_seconds=0)


def test_a_redis_that_stops_answering_costs_the_run_only_the_cache(
    server: FakeOpenAIServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(responses, "RETRY_SECONDS", 0.0)  # ask again at once when it is back
    caplog.set_level(logging.INFO, logger="openai_parallel_toolkit.shared")
    with RedisServer() as lost, worker_pool(server) as pool:
        cache = RequestCache.shared(lost.url)
        lost.stop()
        assert run(pool, cache) == [f"echo: {content}" for _, content in ITEMS]
        assert server.total().requests == len(ITEMS)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "does not answer" in warnings[0].getMessage()
        assert lost.url.split("//")[1] in warnings[0].getMessage()
        lost.start()  # back, empty
        run(pool, cache)
        assert len(cache) == len(ITEMS) and "answers again" in caplog.text
        run(pool, cache)
        assert server.total().requests == 2 * len(ITEMS)
        cache.close()


def test_a_redis_that_does_not_answer_at_first_is_a_config_error() -> None:
    with RedisServer() as gone:
        url = gone.url
    with pytest.raises(ConfigError, match="does not answer"):
        RequestCache.shared(url)


def test_a_cache_takes_a_path_or_a_store() -> None:
    with pytest.raises(TypeError, match="a path or a store"):
        RequestCache()
