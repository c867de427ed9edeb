"""`BatchJob` against the fake server's Batch API; batch processing time passes on a `FakeClock`.

Crashes are real exceptions raised by the HTTP client right after the server acted on an upload
or a batch creation (so the journal has not recorded the id yet), then the job is built again
from its journal, as a re-run would.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import InProcessCli, openai_client

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchJob,
    BatchLimits,
    BatchRunOptions,
    KeyConfig,
    PoolOptions,
    ResultsFileError,
    run_batch_job,
)
from openai_parallel_toolkit._drivers.clients import tls_context
from openai_parallel_toolkit.testing import (
    FakeClock,
    FakeOpenAIServer,
    LimitSettings,
    ServerSettings,
)
from openai_parallel_toolkit.testing.fake_batches import BatchSettings

KEYS = ["sk-batchjob-aaaaaaaaaaaa0001", "sk-batchjob-aaaaaaaaaaaa0002"]
GROUPS = {KEYS[0]: "proj-a", KEYS[1]: "proj-b"}


class Crash(Exception):
    """Stands for the process dying right after the server answered."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[FakeOpenAIServer]:
    settings = ServerSettings(
        limits=LimitSettings(groups=GROUPS), batches=BatchSettings(processing_seconds=100, seed=5)
    )
    with FakeOpenAIServer(keys=KEYS, clock=clock, settings=settings) as fake:
        yield fake


USAGE_FIELDS = ("prompt_tokens", "completion_tokens")


def pool(server: FakeOpenAIServer, crash_after: str | None = None) -> APIKeyManager:
    """A pool over the server's keys; with `crash_after` ("POST /v1/files"), the first such
    request raises `Crash` once the server has answered it."""
    options = PoolOptions()
    if crash_after is not None:
        crashed: list[bool] = []

        def factory(config: KeyConfig, on_response: Callable[[Any], None]) -> openai.OpenAI:
            def hook(response: Any) -> None:
                request = response.request
                if not crashed and f"{request.method} {request.url.path}" == crash_after:
                    crashed.append(True)
                    raise Crash(crash_after)

            http = openai.DefaultHttpxClient(event_hooks={"response": [hook]}, verify=tls_context())
            return openai.OpenAI(
                api_key=config.api_key, base_url=config.api_base, max_retries=0, http_client=http
            )

        options = PoolOptions(client_factory=factory)
    return APIKeyManager(
        api_keys=KEYS, api_base=server.base_url, make_default=False, options=options
    )


def write_input(path: Path, count: int, start: int = 0) -> Path:
    with open(path, "a") as file:
        for i in range(start, start + count):
            body: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "metadata": {"row": i},
            }
            if i % 3 == 0:
                body["custom_id"] = f"q-{i}"
            file.write(json.dumps(body) + "\n")
    return path


def results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_to_end(job: BatchJob, clock: FakeClock, rounds: int = 10) -> None:
    for _ in range(rounds):
        job.submit()
        clock.advance(200)
        job.collect()
        if job.status().finished:
            return
    raise AssertionError(f"not finished: {job.status()}")


def test_a_job_is_split_spread_over_projects_and_collected(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 25)
    out = tmp_path / "out.jsonl"
    with BatchJob(source, out, manager=pool(server), limits=BatchLimits(max_requests=10)) as job:
        assert job.submit() == 3
        status = job.status()
        assert status.batches == {"validating": 3} and status.requests == 25
        assert job.collect() == 0  # nothing finished yet
        clock.advance(200)
        assert job.collect() == 25
        assert job.status().finished and job.submit() == 0
    assert server.batches.created == {"proj-a": 2, "proj-b": 1}
    lines = results(out)
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 25
    assert set(ids) == {f"q-{i}" if i % 3 == 0 else i + 1 for i in range(25)}
    by_id = {line["id"]: line for line in lines}
    answer = by_id[2]  # line 2 is question 1, without a custom_id
    assert answer["metadata"] == {"row": 1}
    assert answer["response"]["choices"][0]["message"]["content"] == "echo: question 1"
    assert set(answer) >= {"id", "request_hash", "metadata", "response"}
    assert by_id["q-3"]["metadata"] == {"row": 3}


def test_a_rerun_polls_what_was_submitted_and_adds_only_new_lines(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    with BatchJob(source, out, manager=pool(server)) as job:
        assert job.submit() == 1
    with BatchJob(source, out, manager=pool(server)) as again:  # a re-run: nothing new
        assert again.submit() == 0
        clock.advance(200)
        assert again.collect() == 6
    write_input(source, 4, start=6)
    with BatchJob(source, out, manager=pool(server)) as more:
        assert more.submit() == 1  # only the 4 new lines
        clock.advance(200)
        assert more.collect() == 4
    assert sum(server.batches.created.values()) == 2
    assert len({line["id"] for line in results(out)}) == 10


@pytest.mark.parametrize("crash_after", ["POST /v1/files", "POST /v1/batches"])
def test_a_crash_after_the_server_acted_never_makes_a_second_file_or_batch(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path, crash_after: str
) -> None:
    source = write_input(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out.jsonl"
    job = BatchJob(source, out, manager=pool(server, crash_after))
    with pytest.raises(Crash):
        job.submit()
    job.close()
    with BatchJob(source, out, manager=pool(server)) as rerun:
        assert rerun.submit() == (1 if crash_after == "POST /v1/files" else 0)
        clock.advance(200)
        assert rerun.collect() == 8
    uploads = [
        e for e in server.request_log() if e["method"] == "POST" and e["path"] == "/v1/files"
    ]
    assert len(uploads) == 1
    assert sum(server.batches.created.values()) == 1
    assert len({line["id"] for line in results(out)}) == 8


def test_the_enqueued_token_limit_is_learned_and_chunks_wait_their_turn(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    server.batches.settings = BatchSettings(enqueued_token_limits={"gpt-4o-mini": 20})
    source = write_input(tmp_path / "in.jsonl", 12)  # 3 tokens a line for the server
    out = tmp_path / "out.jsonl"
    one_project = APIKeyManager(api_keys=KEYS[:1], api_base=server.base_url, make_default=False)
    with BatchJob(source, out, manager=one_project, limits=BatchLimits(max_requests=4)) as job:
        assert job.submit() == 3  # the job does not know the limit yet
        clock.advance(1)
        status = job.status()  # two failed on the limit: learned, waiting
        assert status.chunks == {"submitted": 1, "uploaded": 2}
        assert job.submit() == 0  # the queue is full
        run_to_end(job, clock)
    statuses = Counter(server.batches.statuses().values())
    assert statuses == {"completed": 3, "failed": 2}
    ids = [line["id"] for line in results(out)]
    assert len(ids) == len(set(ids)) == 12
    assert all("response" in line for line in results(out))


def test_failed_expired_and_cancelled_lines_get_error_lines(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    server.batches.settings = BatchSettings(processing_seconds=100, expire_share=0.25, seed=1)
    source = write_input(tmp_path / "in.jsonl", 8)
    with open(source, "a") as file:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "[[server_error]]"}],
        }
        file.write(json.dumps({**body, "custom_id": "boom"}) + "\n")
    out = tmp_path / "out.jsonl"
    with BatchJob(source, out, manager=pool(server)) as job:
        job.submit()
        clock.advance(200)
        assert job.collect() == 9
    lines = {line["id"]: line for line in results(out)}
    assert lines["boom"]["error"]["status_code"] == 500
    expired = [line for line in lines.values() if "error" in line and line["id"] != "boom"]
    assert expired and all(line["error"]["code"] == "batch_expired" for line in expired)

    server.batches.settings = BatchSettings(processing_seconds=100)
    later = write_input(tmp_path / "second.jsonl", 10)
    out2 = tmp_path / "out2.jsonl"
    with BatchJob(later, out2, manager=pool(server)) as job:
        job.submit()
        clock.advance(51)  # half of the lines answered
        assert job.cancel() == 1
        assert job.submit() == 0  # a cancelled job submits nothing more
        clock.advance(5)
        assert job.collect() == 10
    codes = Counter(line["error"]["code"] if "error" in line else "ok" for line in results(out2))
    assert codes == {"ok": 5, "batch_cancelled": 5}


def test_run_batch_job_polls_to_the_end_and_resubmits_expired_lines(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    # 10 lines: 3 expire; their new batch of 3: 1 expires; its batch of 1: none.
    server.batches.settings = BatchSettings(processing_seconds=100, expire_share=0.3, seed=2)
    source = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    options = BatchRunOptions(poll_interval=30, max_retries=2, clock=clock)
    summary = run_batch_job(source, out, manager=pool(server), options=options)
    assert summary.ok and summary.answered == 10
    assert sum(server.batches.created.values()) == 3
    lines = results(out)
    assert len({line["id"] for line in lines}) == len(lines) == 10
    assert all("response" in line for line in lines)
    assert clock.sleeps and set(clock.sleeps) == {30}  # it waited on the clock, never for real


def test_resubmission_is_bounded(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    server.batches.settings = BatchSettings(processing_seconds=10, expire_share=1.0)
    source = write_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    options = BatchRunOptions(poll_interval=5, max_retries=1, clock=clock)
    summary = run_batch_job(source, out, manager=pool(server), options=options)
    assert not summary.ok and summary.failed == 3
    assert sum(server.batches.created.values()) == 2
    assert {line["error"]["code"] for line in results(out)} == {"batch_expired"}


def test_the_command_line_runs_a_batch_job_and_looks_after_its_journal(
    run_cli: InProcessCli, tmp_path: Path
) -> None:
    batches = BatchSettings(validate_seconds=0.01, processing_seconds=0.05, finalize_seconds=0.01)
    settings = ServerSettings(limits=LimitSettings(groups=GROUPS), batches=batches)
    with FakeOpenAIServer(keys=KEYS, settings=settings) as fake:
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"api_keys": KEYS, "api_base": fake.base_url}))
        source = write_input(tmp_path / "in.jsonl", 5)
        out = tmp_path / "out.jsonl"
        summary = tmp_path / "summary.json"
        ran = run_cli(
            "run", str(source), "-o", str(out), "--mode", "batch", "--config", str(config),
            "--poll-interval", "0.02", "--summary", str(summary),
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert len(results(out)) == 5
        # Tokens and cost per model and per key (masked), in the summary and its JSON file,
        # the sums of the result lines' own usage and cost.
        lines = results(out)
        tokens = [sum(r["response"]["usage"][f] for r in lines) for f in USAGE_FIELDS]
        cost = sum(r["cost"] for r in lines)
        record = json.loads(summary.read_text())
        assert record["mode"] == "batch" and record["lines"]["answered"] == 5
        assert [record["tokens"]["input"], record["tokens"]["output"]] == tokens
        assert record["cost"] == pytest.approx(cost) and record["saved"] == pytest.approx(cost)
        assert list(record["by_model"]) == ["gpt-4o-mini"]
        [key] = record["by_key"]
        assert record["by_key"][key]["requests"] == 5 and key not in KEYS and "..." in key
        assert "  model gpt-4o-mini: 5 requests" in ran.stderr
        assert f"  key {key}: 5 requests" in ran.stderr
        journal = str(out) + ".batches.sqlite"
        status = run_cli("batch", "status", journal, "--config", str(config))
        assert status.returncode == 0 and "5/5 requests collected" in status.stdout
        collect = run_cli("batch", "collect", journal, "--config", str(config))
        assert collect.returncode == 0 and "0 result lines written" in collect.stdout
        cancel = run_cli("batch", "cancel", journal, "--config", str(config))
        assert cancel.returncode == 0 and "0 batches cancelled" in cancel.stdout
        missing = run_cli("batch", "status", str(tmp_path / "nope.sqlite"), "--config", str(config))
        assert missing.returncode == 2 and "no such batch journal" in missing.stderr
        assert sum(fake.batches.created.values()) == 1


def test_a_key_the_api_refuses_is_one_masked_line_not_a_traceback(
    run_cli: InProcessCli, tmp_path: Path
) -> None:
    dead = "sk-batch-dead-key-0000000000000001"
    with FakeOpenAIServer(keys=KEYS) as fake:  # it does not know `dead`
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"api_keys": [dead], "api_base": fake.base_url}))
        source = write_input(tmp_path / "in.jsonl", 2)
        out = tmp_path / "out.jsonl"
        ran = run_cli(
            "run", str(source), "-o", str(out), "--mode", "batch", "--config", str(config),
            "--poll-interval", "0.02",
        )  # fmt: skip
        assert ran.returncode == 1, ran.stderr
        assert "error: a Batch API call failed: HTTP 401" in ran.stderr
        assert "Traceback" not in ran.stderr and dead not in ran.stderr
        status = run_cli("batch", "status", str(out) + ".batches.sqlite", "--config", str(config))
        assert "Traceback" not in status.stderr and dead not in status.stderr


def test_a_changed_line_or_a_cancelled_job_stops_cleanly(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    options = BatchRunOptions(poll_interval=50, clock=clock)
    assert run_batch_job(source, out, manager=pool(server), options=options).ok
    lines = source.read_text().splitlines()
    source.write_text("\n".join([lines[0].replace("question 0", "changed"), *lines[1:]]) + "\n")
    with pytest.raises(ResultsFileError, match="another request"):
        run_batch_job(source, out, manager=pool(server), options=options)

    other, out2 = write_input(tmp_path / "b.jsonl", 30), tmp_path / "out2.jsonl"
    with BatchJob(other, out2, manager=pool(server), limits=BatchLimits(max_requests=10)) as job:
        server.batches.settings = BatchSettings(enqueued_token_limits={"gpt-4o-mini": 1})
        job.submit()
        assert job.cancel() == 3
    summary = run_batch_job(other, out2, manager=pool(server), options=options)
    assert summary.status.cancelled and summary.status.finished  # it ends, submits nothing
    assert sum(server.batches.created.values()) == 4


@pytest.mark.parametrize(
    "limits",
    [BatchLimits(max_bytes=700), BatchLimits(max_tokens=30), BatchLimits(max_requests=3)],
)
def test_files_are_split_within_bytes_tokens_and_requests(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path, limits: BatchLimits
) -> None:
    source = write_input(tmp_path / "in.jsonl", 9)  # ~170 bytes and ~10 input tokens a line
    out = tmp_path / "out.jsonl"
    with BatchJob(source, out, manager=pool(server), limits=limits) as job:
        assert job.submit() == 3
        clock.advance(200)
        assert job.collect() == 9
    sizes = []
    for key in KEYS:
        api = openai_client(api_key=key, base_url=server.base_url)
        sizes += [len(api.files.content(f.id).content) for f in api.files.list(purpose="batch")]
    assert len(sizes) == 3 and max(sizes) <= limits.max_bytes


def test_an_unchanged_status_is_printed_again_only_after_a_minute(
    server: FakeOpenAIServer, clock: FakeClock, tmp_path: Path
) -> None:
    server.batches.settings = BatchSettings(processing_seconds=300)
    progress = io.StringIO()
    options = BatchRunOptions(poll_interval=5, clock=clock, progress=progress)
    source = write_input(tmp_path / "in.jsonl", 2)
    assert run_batch_job(source, tmp_path / "out.jsonl", manager=pool(server), options=options).ok
    lines = progress.getvalue().splitlines()
    waiting = [line for line in lines if "1 in progress" in line and "(1 in_progress)" in line]
    # About 60 polls said the same; a line a minute of them is printed (five minutes: 5 or 6).
    assert 4 <= len(waiting) <= 6, lines
    assert "2 results written" in lines[-1]
