"""The key pool under concurrency, its lease bookkeeping, and secrets in odd places."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    KeyState,
    MemoryStore,
    NoKeysAvailableError,
    OpenAIModel,
    PoolOptions,
    RequestFailedError,
    request_openai_api,
)
from openai_parallel_toolkit._drivers.turns import SERVED_AHEAD
from openai_parallel_toolkit.testing import (
    FakeClock,
    FakeOpenAIServer,
    LimitSettings,
    ServerSettings,
)

try:  # openai >= 3 speaks httpx2; older releases httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx  # type: ignore[no-redef]

KEYS = [f"sk-pool-{'k' * 32}-{i:04d}" for i in range(4)]


def _pool(server: FakeOpenAIServer, keys: list[str], **entry: object) -> APIKeyManager:
    return APIKeyManager(
        api_keys=[{"api_key": k, "api_base": server.base_url, **entry} for k in keys],
        make_default=False,
    )


def _run_parallel(manager: APIKeyManager, models: list[OpenAIModel], threads: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=threads) as executor:
        return list(executor.map(lambda m: request_openai_api(m, manager=manager), models))


def test_many_threads_stay_within_configured_limits() -> None:
    with FakeOpenAIServer(keys=KEYS[:3], rpm=1800) as server:
        manager = _pool(server, KEYS[:3], requests_per_min=1800)
        models = [ChatModel(content=f"n{i}") for i in range(150)]
        results = _run_parallel(manager, models, threads=24)
        assert results == [f"echo: n{i}" for i in range(150)]
        total = server.total()
        assert total.rate_limited <= 2  # paced below the server's limit, not bounced off it
        stats = manager.statistics()
        assert stats.successes == 150 and stats.in_flight == 0
        assert all(abs(key.successes - 50) <= 5 for key in stats.keys)


def test_reserved_output_tokens_are_not_given_back() -> None:
    # The server charges prompt + max_tokens at the start; a pool that refunded the unused
    # max_tokens after each reply would run ahead of it and collect 429s.
    with FakeOpenAIServer(keys=KEYS[:1], tpm=180_000) as server:
        manager = _pool(server, KEYS[:1], tokens_per_min=180_000)
        models = [ChatModel(content=f"t{i}", max_tokens=200) for i in range(40)]
        assert len(_run_parallel(manager, models, threads=8)) == 40
        assert server.total().rate_limited <= 1
        assert manager.statistics().in_flight == 0


def test_in_flight_returns_to_zero_after_every_outcome() -> None:
    with FakeOpenAIServer(keys=KEYS[:2]) as server:
        server.set_fault(KEYS[0], "invalid_api_key")
        manager = _pool(server, KEYS[:2])
        assert request_openai_api(ChatModel(content="ok"), manager=manager) == "echo: ok"
        with pytest.raises(RequestFailedError):
            request_openai_api(ChatModel(content="[[context_length_exceeded]]"), manager=manager)

        class BrokenUsage(ChatModel):
            def usage_tokens(self, response: Any) -> int | None:
                raise RuntimeError("bug in a user's model")

        with pytest.raises(RuntimeError, match="bug in a user's model"):
            request_openai_api(BrokenUsage(content="x"), manager=manager)
        stats = manager.statistics()
        assert stats.in_flight == 0
        # The pool is still usable: no reservation was left open.
        assert request_openai_api(ChatModel(content="again"), manager=manager) == "echo: again"


def test_lease_cancel_and_validity() -> None:
    clock = FakeClock()
    manager = APIKeyManager(
        api_keys=[{"api_key": KEYS[0], "requests_per_min": 60}],
        make_default=False,
        options=PoolOptions(clock=clock, client_factory=lambda config, hook: object()),
    )
    first = manager.acquire()
    assert first.send_at == clock.monotonic() and first.still_valid()
    assert isinstance(manager.try_acquire(), float)  # nothing free now: how long to wait
    second = manager.acquire()  # waits its turn on the (fake) clock: 60 RPM, one per second
    assert clock.sleeps == [pytest.approx(1.0)]
    assert second.send_at == clock.monotonic()  # granted for now, never for later
    manager.remove_key(KEYS[0], "revoked")
    assert not second.still_valid()
    second.cancel()
    first.succeed(None)
    with pytest.raises(RuntimeError):
        first.succeed(None)
    stats = manager.statistics()
    assert stats.in_flight == 0 and stats.requests == 1
    assert stats.keys[0].state is KeyState.REMOVED
    with pytest.raises(NoKeysAvailableError, match="revoked"):
        manager.acquire()


def test_pools_given_one_store_share_limits_and_key_health() -> None:
    clock = FakeClock()
    store = MemoryStore()
    options = PoolOptions(clock=clock, store=store, client_factory=lambda config, hook: None)
    entries = [{"api_key": KEYS[0], "requests_per_min": 60}]  # one request a second
    first = APIKeyManager(api_keys=entries, make_default=False, options=options)
    second = APIKeyManager(api_keys=entries, make_default=False, options=options)
    alone = APIKeyManager(api_keys=entries, make_default=False, options=PoolOptions(clock=clock))
    first.acquire().succeed(None)
    # The group's budget is the store's: the second pool finds this second's request taken.
    wait = second.try_acquire()
    assert isinstance(wait, float) and wait > 0.5
    assert not isinstance(alone.try_acquire(), float)  # a pool with its own store does not
    first.remove_key(KEYS[0], "revoked by the first pool")
    (stats,) = second.statistics().keys
    assert stats.state is KeyState.REMOVED and stats.removed_reason == "revoked by the first pool"
    with pytest.raises(NoKeysAvailableError, match="revoked by the first pool"):
        second.try_acquire()


def _echoing_client_factory(status: int, message: Callable[[str], str]) -> Any:
    """Clients whose server echoes the full key back in its error message."""

    def build(config: Any, on_response: Callable[[Any], None]) -> openai.OpenAI:
        def handler(request: Any) -> Any:
            key = request.headers["authorization"].removeprefix("Bearer ")
            body = {"error": {"message": message(key), "type": "invalid_request_error"}}
            return httpx.Response(status, json=body)

        client = httpx.Client(transport=httpx.MockTransport(handler))
        return openai.OpenAI(
            api_key=config.api_key,
            base_url="http://echo.test/v1",
            max_retries=0,
            http_client=client,
        )

    return build


@pytest.mark.parametrize("secret", ["gsk_" + "y" * 40, "sk-proj-" + "y" * 40])
def test_a_server_that_echoes_the_key_does_not_leak_it(
    secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manager = APIKeyManager(
        api_keys=[secret],
        make_default=False,
        options=PoolOptions(
            client_factory=_echoing_client_factory(401, lambda key: f"Incorrect API key: {key}")
        ),
    )
    with pytest.raises(NoKeysAvailableError) as info:
        request_openai_api(ChatModel(content="x"), manager=manager)
    removed = manager.statistics().keys[0].removed_reason or ""
    assert "Incorrect API key" in removed
    fatal = APIKeyManager(
        api_keys=[secret],
        make_default=False,
        options=PoolOptions(
            client_factory=_echoing_client_factory(400, lambda key: f"bad request from {key}")
        ),
    )
    with pytest.raises(RequestFailedError) as bad:
        request_openai_api(ChatModel(content="x"), manager=fatal)
    everything = "".join(
        [
            caplog.text,
            removed,
            *traceback.format_exception(info.value),
            *traceback.format_exception(bad.value),
        ]
    )
    assert secret not in everything
    assert "...yyyy" in everything


def test_each_key_goes_through_its_own_proxy() -> None:
    # Two fake servers stand in for two HTTP proxies: a proxied request reaches the proxy with
    # the upstream URL, which the fake server answers itself. The upstream host does not exist,
    # so a reply at all proves the proxy was used.
    with FakeOpenAIServer() as proxy_a, FakeOpenAIServer() as proxy_b:
        proxies = [proxy_a.base_url.removesuffix("/v1"), proxy_b.base_url.removesuffix("/v1")]
        manager = APIKeyManager(
            api_keys=[
                {"api_key": key, "api_base": "http://api.example.invalid/v1", "proxy": proxy}
                for key, proxy in zip(KEYS[:2], proxies, strict=True)
            ],
            make_default=False,
        )
        for i in range(6):
            assert request_openai_api(ChatModel(content=str(i)), manager=manager) == f"echo: {i}"
        assert set(proxy_a.counters()) == {KEYS[0]}
        assert set(proxy_b.counters()) == {KEYS[1]}
        assert proxy_a.total().successes == proxy_b.total().successes == 3


def test_undeclared_keys_of_one_project_are_paced_together() -> None:
    # Four keys share one 3,000 RPM limit on the server, rejected requests charged too; the
    # config does not say so and gives no limits.
    keys = KEYS[:4]
    with FakeOpenAIServer(
        keys=keys,
        latency=0.02,
        settings=ServerSettings(
            limits=LimitSettings(
                groups={key: "project" for key in keys},
                group_limits={"project": (3000, None)},
                charge_rejected=True,
            )
        ),
    ) as server:
        manager = _pool(server, keys)
        models = [ChatModel(content=f"s{i}") for i in range(200)]
        results = _run_parallel(manager, models, threads=32)
        assert results == [f"echo: s{i}" for i in range(200)]
        total = server.total()
        assert total.rate_limited <= 0.1 * total.requests
        # Each key sees the other three spend most of the limit, from the remaining counts.
        stats = manager.statistics().keys
        assert all(key.others_per_min > 1000 and key.pace_share < 0.7 for key in stats)


@pytest.mark.parametrize(("settle", "expected_wait"), [(True, 10.1), (False, 0.1)])
def test_settling_with_the_servers_count_follows_the_knob(
    settle: bool, expected_wait: float
) -> None:
    from openai_parallel_toolkit import Knobs

    clock = FakeClock()
    manager = APIKeyManager(
        api_keys=[{"api_key": KEYS[0], "tokens_per_min": 6000}],  # 100 tokens/s
        make_default=False,
        options=PoolOptions(
            burst_seconds=0.1,
            knobs=Knobs(ratelimit_after_submission=settle),
            clock=clock,
            client_factory=lambda config, hook: object(),
        ),
    )
    lease = manager.acquire(10)
    lease.succeed(tokens_used=1010, charged=1010)  # the server counted 1,000 more
    manager.acquire(10).cancel()  # 0.1 s to refill the 10 tokens, plus 10 s of debt if settled
    assert sum(clock.sleeps) == pytest.approx(expected_wait, abs=0.01)


def test_batched_calls_from_a_worker_thread() -> None:
    from openai_parallel_toolkit import ChatCompletion

    with FakeOpenAIServer(keys=KEYS[:2]) as server:
        manager = _pool(server, KEYS[:2])
        with ThreadPoolExecutor(max_workers=2) as executor:
            futures = [
                executor.submit(
                    ChatCompletion.create,
                    model="m",
                    messages=[[{"role": "user", "content": f"{w}-{i}"}] for i in range(5)],
                    no_tqdm=True,
                    opt_manager=manager,
                )
                for w in range(2)
            ]
            results = [f.result(timeout=30) for f in futures]
        texts = [[r["choices"][0]["message"]["content"] for r in batch] for batch in results]
        assert texts == [[f"echo: {w}-{i}" for i in range(5)] for w in range(2)]


@pytest.mark.parametrize(
    "moved",
    [
        {"timeout": 30},
        {"burst_seconds": 1.0},
        {"clock": FakeClock()},
        {"client_factory": lambda config, hook: None},
        {"knobs": None, "store": MemoryStore()},
    ],
)
def test_settings_that_moved_into_pool_options_name_their_replacement(
    moved: dict[str, Any],
) -> None:
    with pytest.raises(TypeError) as caught:
        APIKeyManager(api_keys=KEYS, make_default=False, **moved)
    message = str(caught.value)
    assert "options=PoolOptions(" in message
    for name in moved:
        assert f"{name}=..." in message
    # The replacement it names works.
    with APIKeyManager(api_keys=KEYS, make_default=False, options=PoolOptions(timeout=30)) as pool:
        assert pool.options.timeout == 30


def test_a_keyword_that_never_was_a_setting_gets_the_usual_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'timeout_s'"):
        APIKeyManager(api_keys=KEYS, make_default=False, timeout_s=30)  # type: ignore[arg-type]


def test_queued_threads_are_served_at_once_when_slots_free_up() -> None:
    # Limits unknown: after the first send the others wait for its answer (the probe).
    manager = APIKeyManager(
        api_keys=[{"api_key": KEYS[0]}],
        make_default=False,
        options=PoolOptions(client_factory=lambda config, hook: object()),
    )
    first = manager.acquire()
    with ThreadPoolExecutor(max_workers=10) as executor:
        leases = [executor.submit(manager.acquire) for _ in range(10)]
        deadline = time.monotonic() + 10.0
        while manager.statistics().waiting < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert manager.statistics().waiting == 10
        first.succeed()  # the first answer: the threads at the front get their slots here
        assert manager.statistics().in_flight == SERVED_AHEAD
        assert manager.statistics().waiting == 10 - SERVED_AHEAD
        for lease in leases:
            lease.result(timeout=10.0).cancel()
    assert manager.statistics().in_flight == 0
