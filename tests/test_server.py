"""The reverse proxy: the official client against it, in front of the fake server."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx2
import openai
import pytest
from conftest import openai_client

from openai_parallel_toolkit import APIKeyManager, PoolOptions, RetryPolicy, SystemClock
from openai_parallel_toolkit.asgi import BackgroundServer
from openai_parallel_toolkit.server import ProxyServer
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = [f"sk-upstream-{'u' * 28}-{i:04d}" for i in range(4)]
CLIENT_KEY = "proxy-client-key-1234"


@dataclass
class Setup:
    upstream: FakeOpenAIServer
    manager: APIKeyManager
    proxy: ProxyServer
    base_url: str

    def client(self, api_key: str = CLIENT_KEY, **kwargs: object) -> openai.OpenAI:
        return openai_client(api_key=api_key, base_url=self.base_url, **kwargs)


def _settled(manager: APIKeyManager) -> bool:
    """True once no request is in flight; a relayed stream settles just after its last chunk."""
    deadline = time.monotonic() + 2.0
    while manager.statistics().in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    return manager.statistics().in_flight == 0


class ShiftedClock(SystemClock):
    """The real clock, which a test can move ahead (to see what time alone does to a pool)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.shift


def _setup(upstream: FakeOpenAIServer, **options: object) -> Iterator[Setup]:
    entries = options.pop("entries", {})
    timeout = float(options.pop("timeout", 30.0))  # type: ignore[arg-type]
    clock = options.pop("clock", None)
    manager = APIKeyManager(
        api_keys=[{"api_key": k, "api_base": upstream.base_url, **entries} for k in KEYS],
        make_default=False,
        options=PoolOptions(timeout=timeout, clock=clock),  # type: ignore[arg-type]
    )
    proxy = ProxyServer(manager, CLIENT_KEY, timeout=timeout, **options)  # type: ignore[arg-type]
    with BackgroundServer(proxy.app, name="proxy") as running:
        yield Setup(upstream, manager, proxy, running.url + "/v1")


@pytest.fixture
def setup() -> Iterator[Setup]:
    with FakeOpenAIServer(keys=KEYS, latency=0.01, jitter=0.01, seed=2) as upstream:
        yield from _setup(upstream, max_body_bytes=64 * 1024)


def test_every_route(setup: Setup) -> None:
    client = setup.client()
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "echo: hi"
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["p0", "p1", "p2"], n=2, max_tokens=5
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3, 4, 5]
    assert [c.text for c in completion.choices] == ["echo: p0"] * 2 + ["echo: p1"] * 2 + [
        "echo: p2"
    ] * 2
    assert setup.upstream.total().requests == 4  # the list was split: one request per prompt
    per_prompt = client.completions.create(model="m", prompt="p0", n=2, max_tokens=5).usage
    assert completion.usage.total_tokens == 3 * per_prompt.total_tokens  # usage summed
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1]
    response = client.responses.create(model="gpt-4o-mini", input="hello")
    assert "hello" in response.output_text
    models = client.models.list()
    assert any(model.id == "gpt-4o-mini" for model in models.data)
    health = httpx2.get(setup.base_url.removesuffix("/v1") + "/health").json()
    assert health == {"status": "ok", "active_keys": 4}
    stats = httpx2.get(
        setup.base_url.removesuffix("/v1") + "/stats",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    text = stats.text
    assert stats.json()["successes"] >= 8
    assert all(key not in text for key in KEYS) and "sk-...0003" in text


def test_streamed_chat_arrives_in_chunks(setup: Setup) -> None:
    stream = setup.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream this please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) > 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream this please"
    assert chunks[-1].usage is not None
    assert _settled(setup.manager)


def test_wrong_or_missing_client_key(setup: Setup) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        setup.client(api_key="not-the-key").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    missing = httpx2.post(setup.base_url + "/chat/completions", json={"model": "m"})
    assert missing.status_code == 401 and "error" in missing.json()
    assert setup.upstream.total().requests == 0  # nothing went upstream


def test_client_key_never_goes_upstream(setup: Setup) -> None:
    setup.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert {entry["key"] for entry in setup.upstream.request_log()} <= set(KEYS)


def test_oversized_body_gets_413(setup: Setup) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        setup.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x" * 100_000}]
        )
    assert info.value.status_code == 413
    assert setup.upstream.total().requests == 0


def test_quota_key_removed_while_requests_keep_succeeding(setup: Setup) -> None:
    setup.upstream.set_fault(KEYS[1], "insufficient_quota")
    client = setup.client()
    for i in range(12):
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": str(i)}]
        )
        assert reply.choices[0].message.content == f"echo: {i}"
    states = [s.state.value for s in setup.manager.statistics().keys]
    assert states.count("removed") == 1
    assert setup.upstream.counters()[KEYS[1]].requests == 1


def test_200_concurrent_requests(setup: Setup) -> None:
    client = setup.client()

    def ask(i: int) -> str:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"c{i}"}]
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=50) as executor:
        results = list(executor.map(ask, range(200)))
    assert results == [f"echo: c{i}" for i in range(200)]
    assert set(setup.upstream.counters()) == set(KEYS)


def test_permanent_failure_passes_the_upstream_answer(setup: Setup) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        setup.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[[context_length_exceeded]]"}]
        )
    assert info.value.code == "context_length_exceeded"
    assert setup.upstream.total().requests == 1


def test_no_free_key_gets_429_with_retry_after() -> None:
    with FakeOpenAIServer(keys=KEYS) as upstream:
        for running in _setup(upstream, entries={"requests_per_min": 1}, max_wait=0.2):
            client = running.client()
            for _ in range(4):  # one per key
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
            raw = httpx2.post(
                running.base_url + "/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            )
            assert raw.status_code == 429
            assert int(raw.headers["retry-after"]) >= 1
            assert raw.headers["x-ratelimit-limit-requests"] == "4"  # the pool: 4 keys x 1 RPM
            assert upstream.total().requests == 4


def test_upstream_timeout_is_504() -> None:
    with FakeOpenAIServer(keys=KEYS) as upstream:
        upstream.set_fault("*", "slow")
        for running in _setup(
            upstream, timeout=0.3, policy=RetryPolicy(max_retries=1, backoff_base=0.01)
        ):
            with pytest.raises(openai.APIStatusError) as info:
                running.client().chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
            assert info.value.status_code == 504
            assert json.loads(info.value.response.text)["error"]["code"] == "upstream_timeout"


def test_cut_off_upstream_answer_is_retried_and_nothing_leaks(setup: Setup) -> None:
    setup.upstream.set_fault("*", "drop", times=1)  # headers, then the connection is cut
    reply = setup.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "again"}]
    )
    assert reply.choices[0].message.content == "echo: again"
    assert setup.manager.statistics().in_flight == 0
    stream = setup.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "s"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: s"
    assert _settled(setup.manager)


def test_chunked_oversized_body_and_bad_input(setup: Setup) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}]}'

    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    url = setup.base_url + "/chat/completions"
    assert httpx2.post(url, content=chunks(), headers=headers).status_code == 413
    assert httpx2.post(url, content=b"{not json", headers=headers).status_code == 400
    odd = httpx2.post(
        url, json={"model": "m", "messages": [1, 2], "max_tokens": "many"}, headers=headers
    )
    assert odd.status_code < 500  # the upstream judges it; the proxy does not crash
    assert setup.manager.statistics().in_flight == 0


def _ask(client: openai.OpenAI, i: int) -> str:
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}]
    )
    return str(answer.choices[0].message.content)


def test_a_few_upstream_429s_cost_the_proxy_no_lasting_capacity() -> None:
    with FakeOpenAIServer(keys=KEYS, rpm=1200, latency=0.01) as upstream:
        upstream.set_fault("*", "rate_limit", times=20)
        upstream.fault_retry_after = 0.1  # the same story, ten times faster
        clock = ShiftedClock()
        for setup in _setup(upstream, max_wait=10.0, clock=clock):
            with ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(functools.partial(_ask, setup.client()), range(60)))
            assert answers == [f"echo: q{i}" for i in range(60)]
            assert upstream.total().errors == 20  # the injected 429s
            stats = setup.manager.statistics().keys
            assert sum(key.rate_limited for key in stats) == 20
            assert len({key.group for key in stats}) == 4  # never merged
            # A minute later the pace is back to (nearly) the whole limit: nothing is lost for
            # good. How far it fell depends on how the 429s spread over time: not asserted.
            clock.shift += 60.0
            stats = setup.manager.statistics().keys
            assert all(key.pace_share > 0.9 and key.state.value == "active" for key in stats)
