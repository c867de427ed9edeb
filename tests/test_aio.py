"""The asyncio API against the fake server: parity with the threaded API, order, failures,
cancellation, and one pool serving threads and a loop at once within its limits."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import InProcessCli

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchError,
    ChatCompletion,
    ChatModel,
    Completion,
    CompletionModel,
    ConfigError,
    Embedding,
    EmbeddingModel,
    Gpt35Turbo,
    NoKeysAvailableError,
    OpenAIModel,
    PoolOptions,
    RequestFailedError,
    RetryPolicy,
    SlotTimeoutError,
    amulti_process_one,
    aparallel_map,
    arequest_openai_api,
    multi_process_one,
    parallel_map,
    request_openai_api,
    run_jsonl_job,
)
from openai_parallel_toolkit._drivers.turns import SERVED_AHEAD
from openai_parallel_toolkit.models import sends_async
from openai_parallel_toolkit.testing import (
    FakeClock,
    FakeOpenAIServer,
    LimitSettings,
    ServerSettings,
)

ONE_SECOND = ServerSettings(limits=LimitSettings(burst_seconds=1.0))
KEYS = [f"sk-proj-aio{name}{'z' * 36}{i:04d}" for i, name in enumerate(["ant", "bee", "cat"])]
FAST = RetryPolicy(max_retries=2, backoff_base=0.01, backoff_max=0.02)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, latency=0.01, jitter=0.01, seed=3) as fake:
        yield fake


def pool(server: FakeOpenAIServer, keys: list[str] = KEYS, **entry: Any) -> APIKeyManager:
    return APIKeyManager(
        api_keys=[{"api_key": k, "api_base": server.base_url, **entry} for k in keys],
        make_default=False,
    )


async def wait_until(condition: Any) -> None:
    """Yield to the loop until `condition()` holds (bounded by the test timeout)."""
    while not condition():
        await asyncio.sleep(0.01)


# -- parity ----------------------------------------------------------------------------------


async def test_arequest_matches_request_for_every_model(server: FakeOpenAIServer) -> None:
    manager = pool(server)
    models: list[OpenAIModel] = [
        Gpt35Turbo(content="hello", prompt="be brief", temperature=0.2),
        ChatModel(content="hi", model="gpt-4o"),
        CompletionModel("once"),
        EmbeddingModel(["a", "b"]),
        EmbeddingModel("a"),
    ]
    for model in models:
        assert sends_async(model)
        expected = await asyncio.to_thread(request_openai_api, model, manager=manager)
        assert await arequest_openai_api(model, manager=manager) == expected
    raw = await arequest_openai_api(ChatModel(content="raw"), manager=manager, raw=True)
    assert raw.choices[0].message.content == "echo: raw"
    assert manager.statistics().in_flight == 0
    await manager.aclose()


async def test_amulti_process_one_keeps_order_and_isolates_failures(
    server: FakeOpenAIServer,
) -> None:
    manager = pool(server)
    data = [("p", f"item {i}") for i in range(40)]
    data[7] = ("p", "item 7 [[context_length_exceeded]]")
    with pytest.raises(BatchError) as caught:
        await amulti_process_one(data, Gpt35Turbo, manager=manager, progress=False)
    assert set(caught.value.errors) == {7}
    assert isinstance(caught.value.errors[7], RequestFailedError)
    expected = [None if i == 7 else f"echo: item {i}" for i in range(40)]
    assert caught.value.results == expected
    nones = await amulti_process_one(
        data, Gpt35Turbo, manager=manager, on_error="none", progress=False, concurrency=5
    )
    threaded = await asyncio.to_thread(
        multi_process_one, data, Gpt35Turbo, manager=manager, on_error="none", progress=False
    )
    assert nones == threaded == expected
    returned = await amulti_process_one(
        data, Gpt35Turbo, 0.5, manager=manager, on_error="return", progress=False
    )
    assert isinstance(returned[7], RequestFailedError) and returned[8] == "echo: item 8"
    assert manager.statistics().in_flight == 0


async def test_aparallel_map_order_errors_and_parity() -> None:
    async def halve(n: int) -> float:
        await asyncio.sleep(0.001 * (n % 5))  # finish out of order
        if n == 3:
            raise ValueError("three")
        return n / 2

    items = list(range(30))
    result = await aparallel_map(halve, items, concurrency=4, on_error="none", progress=False)
    threaded = parallel_map(
        lambda n: asyncio.run(halve(n)), items, threads=4, on_error="none", progress=False
    )
    assert result == threaded == [None if n == 3 else n / 2 for n in items]
    with pytest.raises(BatchError) as caught:
        await aparallel_map(halve, items, concurrency=8, progress=False)
    assert list(caught.value.errors) == [3]
    assert await aparallel_map(halve, [], concurrency=2, progress=False) == []
    with pytest.raises(ValueError, match="on_error"):
        await aparallel_map(halve, items, concurrency=2, on_error="skip")  # type: ignore[arg-type]


async def test_batched_acreate_matches_create(server: FakeOpenAIServer) -> None:
    manager = pool(server)
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    chat = {"model": "gpt-4o-mini", "messages": conversations, "no_tqdm": True}
    completion = {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b", "c"], "no_tqdm": True}
    embedding = {"model": "text-embedding-3-small", "input": [f"t{i}" for i in range(20)]}
    for call, params in (
        (ChatCompletion, chat),
        (Completion, completion),
        (Embedding, {**embedding, "no_tqdm": True}),
    ):
        threaded = await asyncio.to_thread(call.create, opt_manager=manager, **params)
        awaited = await call.acreate(opt_manager=manager, **params)
        assert _without_ids(awaited) == _without_ids(threaded)
        assert len(awaited) == len(
            params.get("messages") or params.get("prompt") or embedding["input"]
        )
    bad = [[{"role": "user", "content": "x [[context_length_exceeded]]"}], conversations[0]]
    returned = await ChatCompletion.acreate(
        model="gpt-4o-mini", messages=bad, opt_manager=manager, opt_on_error="return", no_tqdm=True
    )
    assert isinstance(returned[0], RequestFailedError) and returned[1]["choices"]
    with pytest.raises(BatchError):
        await ChatCompletion.acreate(model="gpt-4o-mini", messages=bad, opt_manager=manager)


def _without_ids(results: list[Any]) -> list[Any]:
    """Results with the fields that differ between two sends (ids, timestamps) removed."""
    return [
        {k: v for k, v in r.items() if k not in ("id", "created", "system_fingerprint")}
        for r in results
    ]


# -- models that only send synchronously -------------------------------------------------------


class SyncOnly(OpenAIModel):
    """A model of the original kind: only `generate`."""

    threads: list[int]

    def __init__(self, prompt: str, content: str) -> None:
        self.content = content

    def generate(self, client: openai.OpenAI) -> Any:
        SyncOnly.threads.append(threading.get_ident())
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": self.content}]
        )


class Shouting(ChatModel):
    """A ChatModel subclass that changes `generate` only: its `generate` must be what is sent."""

    def generate(self, client: openai.OpenAI) -> Any:
        self.messages = [{"role": "user", "content": "LOUD"}]
        return super().generate(client)


async def test_a_model_with_only_generate_runs_off_the_loop(server: FakeOpenAIServer) -> None:
    manager = pool(server)
    SyncOnly.threads = []
    assert not sends_async(SyncOnly("", "x")) and not sends_async(Shouting(content="x"))
    results = await amulti_process_one(
        [("", f"s{i}") for i in range(10)], SyncOnly, manager=manager, progress=False
    )
    assert results == [f"echo: s{i}" for i in range(10)]
    assert SyncOnly.threads and threading.get_ident() not in SyncOnly.threads
    assert await arequest_openai_api(Shouting(content="quiet"), manager=manager) == "echo: LOUD"
    assert manager.statistics().successes == 11


def test_the_async_api_under_asyncio_run_twice(server: FakeOpenAIServer) -> None:
    """Two loops one after the other (scripts, notebooks restarting): each gets its clients."""
    manager = pool(server)
    for run in range(2):
        result = asyncio.run(arequest_openai_api(ChatModel(content=f"run {run}"), manager=manager))
        assert result == f"echo: run {run}"
    assert request_openai_api(ChatModel(content="sync"), manager=manager) == "echo: sync"


async def test_the_aiohttp_transport_sends_reads_headers_and_closes() -> None:
    """`PoolOptions(async_transport="aiohttp")`: the same answers, the limiter still sees every
    response's headers, and `aclose` closes the clients (aiohttp would warn otherwise)."""
    with FakeOpenAIServer(rpm=600) as server:
        await _aiohttp_round(server)
    with pytest.raises(ValueError, match="async_transport"):
        PoolOptions(async_transport="curl")  # type: ignore[arg-type]


async def _aiohttp_round(server: FakeOpenAIServer) -> None:
    manager = APIKeyManager(
        api_keys=[{"api_key": KEYS[0], "api_base": server.base_url}],
        make_default=False,
        options=PoolOptions(async_transport="aiohttp"),
    )
    lease = await manager.acquire_async()
    client = lease.async_client
    lease.cancel()
    assert "Aio" in type(client._client).__name__  # openai's aiohttp transport, not httpx
    results = await amulti_process_one(
        [("", f"a{i}") for i in range(8)], ChatModel, manager=manager
    )
    assert results == [f"echo: a{i}" for i in range(8)]
    (key,) = manager.statistics().keys
    assert key.requests_per_min == 600  # learned from the headers the aiohttp client saw
    await manager.aclose()
    assert client.is_closed()


# -- cancellation --------------------------------------------------------------------------------


async def test_cancelling_sending_tasks_gives_reservations_back(
    server: FakeOpenAIServer,
) -> None:
    manager = pool(server, requests_per_min=600)
    server.slow_seconds = 30.0
    server.set_fault("*", "slow")
    tasks = [
        asyncio.ensure_future(arequest_openai_api(ChatModel(content=f"c{i}"), manager=manager))
        for i in range(6)
    ]
    await wait_until(lambda: manager.statistics().in_flight == 6)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(task.cancelled() for task in tasks)
    stats = manager.statistics()
    assert stats.in_flight == 0 and stats.waiting == 0
    server.clear_faults()
    assert await arequest_openai_api(ChatModel(content="next"), manager=manager) == "echo: next"


async def test_cancelling_a_map_releases_waiting_and_sending_tasks(
    server: FakeOpenAIServer,
) -> None:
    # One request per second per key: most tasks wait in the queue, a few are sending.
    manager = pool(server, requests_per_min=60)
    server.slow_seconds = 30.0
    server.set_fault("*", "slow")
    data = [("", f"m{i}") for i in range(30)]
    run = asyncio.ensure_future(
        amulti_process_one(data, ChatModel, manager=manager, progress=False, concurrency=20)
    )
    await wait_until(lambda: manager.statistics().in_flight >= 1 and manager.statistics().waiting)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    stats = manager.statistics()
    assert stats.in_flight == 0 and stats.waiting == 0
    server.clear_faults()
    lease = manager.try_acquire()
    assert not isinstance(lease, float)  # the slots taken by cancelled sends were given back
    lease.cancel()


async def test_a_waiting_task_with_a_timeout_gives_up_its_place() -> None:
    clock = FakeClock()
    manager = APIKeyManager(
        api_keys=[{"api_key": KEYS[0], "requests_per_min": 60}],
        make_default=False,
        options=PoolOptions(burst_seconds=1.0, client_factory=lambda config, hook: object()),
    )
    first = await manager.acquire_async()
    with pytest.raises(SlotTimeoutError) as caught:
        await manager.acquire_async(timeout=0.01)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.retry_after is not None and caught.value.retry_after > 0.01
    assert manager.statistics().waiting == 0
    first.cancel()
    second = await manager.acquire_async(timeout=0.01)  # the cancelled slot is free again
    second.cancel()
    del clock


# -- waiting: fairness and limits ---------------------------------------------------------------


async def test_tasks_are_served_in_arrival_order_on_a_test_clock() -> None:
    clock = FakeClock()
    manager = APIKeyManager(
        api_keys=[{"api_key": KEYS[0], "requests_per_min": 60}],
        make_default=False,
        options=PoolOptions(
            burst_seconds=1.0, clock=clock, client_factory=lambda config, hook: object()
        ),
    )
    served: list[int] = []

    async def take(index: int) -> None:
        lease = await manager.acquire_async()
        served.append(index)
        lease.succeed()

    await asyncio.gather(*(take(i) for i in range(10)))
    assert served == list(range(10))
    assert clock.monotonic() - 1000.0 >= 8.0  # one a second after the burst, no real waiting


def _unlimited_pool() -> APIKeyManager:
    """One key, limits unknown: after the first send, others wait until it is answered."""
    return APIKeyManager(
        api_keys=[{"api_key": KEYS[0]}],
        make_default=False,
        options=PoolOptions(client_factory=lambda config, hook: object()),
    )


async def test_queued_tasks_are_served_at_once_when_slots_free_up() -> None:
    manager = _unlimited_pool()
    first = await manager.acquire_async()  # the probe: the others queue behind it
    served: list[int] = []

    async def take(index: int) -> Any:
        lease = await manager.acquire_async()
        served.append(index)
        return lease

    tasks = [asyncio.ensure_future(take(i)) for i in range(20)]
    await wait_until(lambda: manager.statistics().waiting == 20)
    first.succeed()  # the first answer: the queued tasks at the front get their slots here
    assert manager.statistics().in_flight == SERVED_AHEAD
    assert manager.statistics().waiting == 20 - SERVED_AHEAD
    for _ in range(3):  # a few turns of the loop serve them all, not one task per turn
        await asyncio.sleep(0)
    assert served == list(range(20))
    for lease in await asyncio.gather(*tasks):
        lease.cancel()
    assert manager.statistics().in_flight == 0


async def test_a_task_served_in_its_place_then_cancelled_gives_its_slot_back() -> None:
    manager = _unlimited_pool()
    first = await manager.acquire_async()
    tasks = [asyncio.ensure_future(manager.acquire_async()) for _ in range(5)]
    await wait_until(lambda: manager.statistics().waiting == 5)
    first.succeed()
    assert manager.statistics().in_flight == 5  # slots taken for the five where they wait
    tasks[2].cancel()  # before it ran: its slot was taken for it and must go back
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert manager.statistics().in_flight == 4
    for lease in outcomes[:2] + outcomes[3:]:
        lease.cancel()
    assert manager.statistics().in_flight == 0


async def test_threads_and_a_loop_share_one_pool_within_its_limits() -> None:
    with FakeOpenAIServer(keys=KEYS[:2], rpm=1200, latency=0.02, settings=ONE_SECOND) as fake:
        manager = pool(fake, KEYS[:2], requests_per_min=1200)
        data = [("", f"item {i}") for i in range(60)]

        def threaded() -> list[Any]:
            return multi_process_one(data, ChatModel, manager=manager, threads=16, progress=False)

        from_threads, from_loop = await asyncio.gather(
            asyncio.to_thread(threaded),
            amulti_process_one(data, ChatModel, manager=manager, progress=False, concurrency=64),
        )
        assert from_threads == from_loop == [f"echo: item {i}" for i in range(60)]
        total = fake.total()
        assert total.successes == 120 and total.rate_limited == 0
        stats = manager.statistics()
        assert stats.in_flight == 0 and stats.waiting == 0 and stats.rate_limited == 0
        await manager.aclose()


# -- errors ----------------------------------------------------------------------------------


async def test_errors_match_the_threaded_engine_and_mask_keys(server: FakeOpenAIServer) -> None:
    manager = pool(server)
    with pytest.raises(RequestFailedError) as caught:
        await arequest_openai_api(
            ChatModel(content="[[context_length_exceeded]]"), manager=manager, policy=FAST
        )
    assert caught.value.status_code == 400
    for key in KEYS:
        server.set_fault(key, "invalid_api_key")
    with pytest.raises(NoKeysAvailableError) as dead:
        await arequest_openai_api(ChatModel(content="x"), manager=manager, policy=FAST)
    text = f"{dead.value} {dead.value.__cause__!r} {caught.value.__cause__}"
    assert not any(key in text for key in KEYS)
    assert manager.statistics().in_flight == 0


# -- the proxy on the async driver ----------------------------------------------------------


def test_proxy_requests_wait_in_turn_within_the_limits() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from openai_parallel_toolkit.asgi import BackgroundServer
    from openai_parallel_toolkit.server import ProxyServer

    with FakeOpenAIServer(keys=KEYS, rpm=240, settings=ONE_SECOND) as upstream:
        manager = pool(upstream, requests_per_min=240)
        proxy = ProxyServer(manager, "client-key", max_wait=30.0)
        with BackgroundServer(proxy.app, name="proxy") as running:
            client = openai.OpenAI(
                api_key="client-key", base_url=running.url + "/v1", max_retries=0
            )

            def ask(i: int) -> str | None:
                reply = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"p{i}"}]
                )
                return reply.choices[0].message.content

            with ThreadPoolExecutor(24) as threads:
                answers = list(threads.map(ask, range(24)))
        assert answers == [f"echo: p{i}" for i in range(24)]
        assert upstream.total().rate_limited == 0
        stats = manager.statistics()
        assert stats.in_flight == 0 and stats.waiting == 0


# -- JSONL jobs -------------------------------------------------------------------------------


def _write_requests(path: Path, count: int, marker: str = "[[context_length_exceeded]]") -> Path:
    lines = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]}
        for i in range(count)
    ]
    lines.append({"model": "m", "messages": [{"role": "user", "content": marker}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _answers(path: Path) -> dict[object, object]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {
        r["id"]: r["response"]["choices"][0]["message"]["content"]
        if "response" in r
        else r["error"]["status_code"]
        for r in records
    }


async def test_a_jsonl_job_on_tasks_matches_threads_inside_a_running_loop(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    manager = pool(server)
    requests = _write_requests(tmp_path / "requests.jsonl", 30, "[[server_error]]")
    threaded, tasks = tmp_path / "threaded.jsonl", tmp_path / "tasks.jsonl"
    policy = FAST
    one = run_jsonl_job(requests, threaded, manager=manager, progress=False, policy=policy)
    # Called from a running loop (a notebook): the job's own loop runs in a worker thread.
    two = run_jsonl_job(
        requests, tasks, manager=manager, progress=False, policy=policy, use_async=True
    )
    assert (one.done, one.failed) == (two.done, two.failed) == (30, 1)
    assert _answers(tasks) == _answers(threaded)
    assert manager.statistics().in_flight == 0


def test_run_command_async_option(
    run_cli: InProcessCli, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = tmp_path / "keys.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    requests = _write_requests(tmp_path / "requests.jsonl", 12)
    output = tmp_path / "results.jsonl"
    done = run_cli("run", str(requests), "-o", str(output), "--config", str(config), "--async",
                   "--no-progress")  # fmt: skip
    assert done.returncode == 1, done.stderr  # the last line failed for good
    answers = _answers(output)
    assert [answers[i] for i in range(1, 13)] == [f"echo: question {i}" for i in range(12)]
    assert answers[13] == 400


def test_the_aiohttp_transport_without_aiohttp_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "aiohttp" else real(name, *args),
    )
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[aiohttp\]"'):
        PoolOptions(async_transport="aiohttp")
