"""The fake server's Batch API (`/v1/files`, `/v1/batches`), driven by the official client.

Processing time passes on a `FakeClock`: no test sleeps.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import openai_client

from openai_parallel_toolkit.testing import (
    FakeClock,
    FakeOpenAIServer,
    LimitSettings,
    ServerSettings,
)
from openai_parallel_toolkit.testing.fake_batches import BatchSettings

KEY = "sk-batch-key-0001"
SAME_PROJECT = "sk-batch-key-0002"
OTHER_PROJECT = "sk-batch-key-0003"
CHAT = "/v1/chat/completions"


def client(server: FakeOpenAIServer, key: str = KEY) -> openai.OpenAI:
    return openai_client(api_key=key, base_url=server.base_url, timeout=5.0)


def line(custom_id: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in lines).encode()


def upload(api: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    return api.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id


def records(api: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = api.files.content(file_id).text
    return {r["custom_id"]: r for r in map(json.loads, text.splitlines())}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[FakeOpenAIServer]:
    groups = {KEY: "proj-a", SAME_PROJECT: "proj-a", OTHER_PROJECT: "proj-b"}
    settings = ServerSettings(
        limits=LimitSettings(groups=groups), batches=BatchSettings(processing_seconds=100, seed=7)
    )
    with FakeOpenAIServer(clock=clock, settings=settings) as fake:
        yield fake


def test_file_upload_retrieve_content_delete(server: FakeOpenAIServer) -> None:
    api = client(server)
    data = jsonl([line("a", "hello")])
    made = api.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert made.object == "file" and made.purpose == "batch" and made.bytes == len(data)
    assert made.filename == "in.jsonl" and made.id.startswith("file-")
    assert api.files.retrieve(made.id).id == made.id
    assert api.files.content(made.id).content == data
    assert [f.id for f in api.files.list()] == [made.id]
    # Files belong to the project: a key of another project does not see them.
    with pytest.raises(openai.NotFoundError):
        client(server, OTHER_PROJECT).files.retrieve(made.id)
    assert client(server, SAME_PROJECT).files.retrieve(made.id).id == made.id
    assert api.files.delete(made.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(made.id)


def test_batch_runs_through_its_statuses_and_answers_like_the_online_endpoint(
    server: FakeOpenAIServer, clock: FakeClock
) -> None:
    api = client(server)
    lines = [line(f"id-{i}", f"text {i}") for i in range(10)]
    batch = api.batches.create(
        input_file_id=upload(api, lines),
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": "t"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "t"}
    assert batch.endpoint == CHAT and batch.completion_window == "24h"
    clock.advance(1)
    batch = api.batches.retrieve(batch.id)
    assert batch.status == "in_progress" and batch.request_counts is not None
    assert batch.request_counts.total == 10 and batch.request_counts.completed == 0
    clock.advance(50)
    counts = api.batches.retrieve(batch.id).request_counts
    assert counts is not None and counts.completed == 5
    clock.advance(50)
    assert api.batches.retrieve(batch.id).status == "finalizing"
    clock.advance(1)
    batch = api.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.completed_at is not None and batch.in_progress_at is not None
    assert batch.request_counts is not None and batch.request_counts.completed == 10
    output = records(api, batch.output_file_id)
    assert sorted(output) == sorted(f"id-{i}" for i in range(10))
    online = api.chat.completions.create(**lines[3]["body"])
    answer = output["id-3"]["response"]
    assert answer["status_code"] == 200 and output["id-3"]["error"] is None
    assert answer["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content
    assert answer["body"]["usage"]["prompt_tokens"] == online.usage.prompt_tokens  # type: ignore[union-attr]
    assert [b.id for b in api.batches.list()] == [batch.id]
    assert server.batches.created == {"proj-a": 1}


def test_line_failures_go_to_the_error_file_with_their_response(
    server: FakeOpenAIServer, clock: FakeClock
) -> None:
    api = client(server)
    lines = [line("good", "fine"), line("bad", "boom [[server_error]]")]
    lines.append(line("long", "[[context_length_exceeded]]"))
    batch = api.batches.create(
        input_file_id=upload(api, lines), endpoint=CHAT, completion_window="24h"
    )
    clock.advance(200)
    batch = api.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)
    assert list(records(api, batch.output_file_id)) == ["good"]
    errors = records(api, batch.error_file_id)
    assert errors["bad"]["response"]["status_code"] == 500
    assert errors["long"]["response"]["status_code"] == 400
    assert errors["long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"


def test_shares_of_lines_fail_and_expire(server: FakeOpenAIServer, clock: FakeClock) -> None:
    server.batches.settings = BatchSettings(expire_share=0.2, fail_share=0.25, seed=3)
    api = client(server)
    lines = [line(f"l{i}", f"t{i}") for i in range(20)]
    batch = api.batches.create(
        input_file_id=upload(api, lines), endpoint=CHAT, completion_window="24h"
    )
    clock.advance(100)
    batch = api.batches.retrieve(batch.id)
    assert batch.status == "expired" and batch.expired_at is not None
    output, errors = records(api, batch.output_file_id), records(api, batch.error_file_id)
    assert len(output) + len(errors) == 20 and not set(output) & set(errors)
    expired = [r for r in errors.values() if r["error"] is not None]
    assert len(expired) == 4 and all(r["error"]["code"] == "batch_expired" for r in expired)
    assert sum(1 for r in errors.values() if r["response"] is not None) == 4
    assert batch.request_counts is not None and batch.request_counts.failed == 8


def test_cancel_keeps_the_answers_so_far(server: FakeOpenAIServer, clock: FakeClock) -> None:
    api = client(server)
    lines = [line(f"c{i}", f"t{i}") for i in range(10)]
    batch = api.batches.create(
        input_file_id=upload(api, lines), endpoint=CHAT, completion_window="24h"
    )
    clock.advance(1 + 30)
    assert api.batches.cancel(batch.id).status == "cancelling"
    clock.advance(1)
    batch = api.batches.retrieve(batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    output, errors = records(api, batch.output_file_id), records(api, batch.error_file_id)
    assert sorted(output) == ["c0", "c1", "c2"]
    assert {r["error"]["code"] for r in errors.values()} == {"batch_cancelled"}
    done = _completed(api, clock, lines[:1])
    with pytest.raises(openai.ConflictError):
        api.batches.cancel(done)


def _completed(api: openai.OpenAI, clock: FakeClock, lines: list[dict[str, Any]]) -> str:
    batch = api.batches.create(
        input_file_id=upload(api, lines), endpoint=CHAT, completion_window="24h"
    )
    clock.advance(200)
    assert api.batches.retrieve(batch.id).status == "completed"
    return batch.id


def test_invalid_input_fails_the_batch_naming_each_line(
    server: FakeOpenAIServer, clock: FakeClock
) -> None:
    api = client(server)
    bad = [line("x", "a"), line("x", "b"), {**line("y", "c"), "url": "/v1/embeddings"}]
    batch = api.batches.create(
        input_file_id=upload(api, bad), endpoint=CHAT, completion_window="24h"
    )
    clock.advance(1)
    batch = api.batches.retrieve(batch.id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("duplicate_custom_id", 2),
        ("url_mismatch", 3),
    ]
    with pytest.raises(openai.BadRequestError):
        api.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/x", completion_window="24h"
        )  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        api.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")


def test_enqueued_token_limit_per_model_and_project(
    server: FakeOpenAIServer, clock: FakeClock
) -> None:
    lines = [line(f"q{i}", "x" * 40) for i in range(10)]  # 11 tokens each
    server.batches.settings = BatchSettings(enqueued_token_limits={"gpt-4o-mini": 150})
    api = client(server)

    def submit(key: str, count: int) -> str:
        other = client(server, key)
        return other.batches.create(
            input_file_id=upload(other, lines[:count]), endpoint=CHAT, completion_window="24h"
        ).id

    first = submit(KEY, 10)  # 110 of 150
    second = submit(SAME_PROJECT, 5)  # 55 more in the same project: over
    third = submit(OTHER_PROJECT, 10)  # another project has its own queue
    clock.advance(1)
    assert api.batches.retrieve(first).status == "in_progress"
    failed = client(server, SAME_PROJECT).batches.retrieve(second)
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data
    error = failed.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert "Limit: 150 enqueued tokens" in (error.message or "")
    assert client(server, OTHER_PROJECT).batches.retrieve(third).status == "in_progress"
    clock.advance(200)  # the first is done: its tokens leave the queue
    retry = submit(SAME_PROJECT, 5)
    clock.advance(1)
    assert api.batches.retrieve(retry).status == "in_progress"
