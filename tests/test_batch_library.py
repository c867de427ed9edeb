"""The library's ``mode=``: `multi_process_one` and the openai-manager style calls through the
Batch API (batches advance on the server's `FakeClock`, which the run's polling moves) and on
the flex tier; the results come back in input order, as online."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchError,
    BatchRunOptions,
    ChatCompletion,
    Embedding,
    Gpt35Turbo,
    amulti_process_one,
    multi_process_one,
)
from openai_parallel_toolkit.testing import FakeClock, FakeOpenAIServer, ServerSettings
from openai_parallel_toolkit.testing.fake_batches import BatchSettings

KEYS = ["sk-batchlib-aaaaaaaaaaaa0001", "sk-batchlib-aaaaaaaaaaaa0002"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[FakeOpenAIServer]:
    settings = BatchSettings(processing_seconds=100, seed=4)
    with FakeOpenAIServer(
        keys=KEYS, clock=clock, settings=ServerSettings(batches=settings)
    ) as fake:
        yield fake


@pytest.fixture
def manager(server: FakeOpenAIServer) -> Iterator[APIKeyManager]:
    pool = APIKeyManager(api_keys=KEYS, api_base=server.base_url, make_default=False)
    yield pool
    pool.close()


def test_multi_process_one_in_batch_mode_answers_in_order(
    server: FakeOpenAIServer, clock: FakeClock, manager: APIKeyManager
) -> None:
    data = [("Say", f"item {i}") for i in range(12)]
    options = BatchRunOptions(poll_interval=50, clock=clock)
    results = multi_process_one(
        data, Gpt35Turbo, manager=manager, mode="batch", batch_options=options, progress=False
    )
    online = multi_process_one(data, Gpt35Turbo, manager=manager, progress=False)
    assert results == online  # the same parsed texts, in the same order
    assert sum(server.batches.created.values()) == 1


def test_a_failed_line_follows_on_error(
    server: FakeOpenAIServer, clock: FakeClock, manager: APIKeyManager
) -> None:
    data = [("Say", "fine"), ("Say", "[[context_length_exceeded]]"), ("Say", "also fine")]
    options = BatchRunOptions(poll_interval=50, clock=clock)
    with pytest.raises(BatchError) as caught:
        multi_process_one(data, Gpt35Turbo, manager=manager, mode="batch", batch_options=options)
    assert list(caught.value.errors) == [1]
    assert caught.value.results[0] is not None and caught.value.results[2] is not None
    with pytest.raises(ValueError, match="max_cost"):
        multi_process_one(data, Gpt35Turbo, manager=manager, mode="batch", max_cost=1.0)


def test_batched_calls_take_mode_batch(
    server: FakeOpenAIServer, clock: FakeClock, manager: APIKeyManager
) -> None:
    options = BatchRunOptions(poll_interval=50, clock=clock)
    conversations = [[{"role": "user", "content": f"c {i}"}] for i in range(5)]
    answers = ChatCompletion.create(
        model="gpt-4o-mini",
        messages=conversations,
        mode="batch",
        opt_manager=manager,
        opt_batch_options=options,
        no_tqdm=True,
    )
    texts = [a["choices"][0]["message"]["content"] for a in answers]
    assert texts == [f"echo: c {i}" for i in range(5)]
    inputs = [f"text {i}" for i in range(20)]  # two requests of up to 16 inputs
    vectors = Embedding.create(
        model="text-embedding-3-small",
        input=inputs,
        opt_mode="batch",
        opt_manager=manager,
        opt_batch_options=options,
        no_tqdm=True,
    )
    online = Embedding.create(
        model="text-embedding-3-small", input=inputs, opt_manager=manager, no_tqdm=True
    )
    assert len(vectors) == len(online) == 20
    for batched, direct in zip(vectors, online, strict=True):
        # Online answers come as float32 (base64), batch answers as JSON numbers.
        assert batched["data"][0]["embedding"] == pytest.approx(direct["data"][0]["embedding"])
    with pytest.raises(TypeError, match="mode= or opt_mode="):
        ChatCompletion.create(
            model="gpt-4o-mini", messages=conversations, mode="batch", opt_mode="flex"
        )
    ChatCompletion.create(
        model="gpt-4o-mini", messages=conversations[:1], mode="online", opt_manager=manager,
        no_tqdm=True,
    )  # fmt: skip
    body = server.request_log()[-1]["body"]
    assert body["messages"] == conversations[0] and "mode" not in body  # an option, not sent


async def test_amulti_process_one_in_flex_mode_with_fallback(
    server: FakeOpenAIServer, manager: APIKeyManager
) -> None:
    server.flex.unavailable_share = 0.5
    data = [("Say", f"item {i}") for i in range(8)]
    results = await amulti_process_one(
        data, Gpt35Turbo, manager=manager, mode="flex", fallback="standard", progress=False
    )
    standard = multi_process_one(data, Gpt35Turbo, manager=manager, progress=False)
    assert results == standard
    tiers = [e["body"].get("service_tier") for e in server.request_log()]
    assert tiers.count("flex") == 8 and server.flex.refused == tiers.count(None) - 8
