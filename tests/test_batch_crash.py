"""``run --mode batch`` in a real subprocess, killed with SIGKILL twice while batches are in
flight, then run again to the end.

The fake server runs in this process on a `FakeClock`: batches stay in flight until the test
moves that clock, so each kill lands while batches are pending, whatever the machine's speed.
The job's polling is real (a short --poll-interval); the test waits for what the job did (the
server's counts, the output), never for a time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import forked
from conftest import openai_client

from openai_parallel_toolkit.testing import (
    FakeClock,
    FakeOpenAIServer,
    LimitSettings,
    ServerSettings,
)
from openai_parallel_toolkit.testing.fake_batches import BatchSettings

KEYS = [f"sk-crashjob-aaaaaaaaaaaa000{i}" for i in range(4)]
GROUPS = {KEYS[0]: "proj-a", KEYS[1]: "proj-a", KEYS[2]: "proj-b", KEYS[3]: "proj-b"}
LINES = 10_000
BATCH_SIZE = 1_000
# The server counts "question 1234" as 4 tokens: 4,000 a file. Two files per project fit.
QUEUE_LIMIT = 9_000


def start(config: Path, source: Path, out: Path) -> forked.Popen:
    command = [
        sys.executable, "-m", "openai_parallel_toolkit", "run", str(source), "-o", str(out),
        "--mode", "batch", "--batch-size", str(BATCH_SIZE), "--poll-interval", "0.02",
        "--max-retries", "6", "--config", str(config), "--no-progress",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    # A process of its own, forked from one that has imported the package (see `forked`).
    return forked.Popen(command, stdout=forked.DEVNULL, stderr=forked.PIPE, text=True, env=env)


def wait_for(condition: Callable[[], bool], process: forked.Popen) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)


def kill(process: forked.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def output_lines(out: Path) -> int:
    if not out.exists():
        return 0
    with open(out, "rb") as file:
        return sum(1 for line in file if line.endswith(b"\n"))


def test_a_batch_job_killed_twice_in_flight_finishes_with_every_id_once(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = BatchSettings(
        validate_seconds=1,
        processing_seconds=100,
        finalize_seconds=1,
        expire_share=0.05,
        enqueued_token_limits={"gpt-4o-mini": QUEUE_LIMIT},
        seed=11,
    )
    source = tmp_path / "in.jsonl"
    with open(source, "w") as file:
        for i in range(LINES):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"question {i}"}],
            }
            file.write(json.dumps({**body, "custom_id": f"q-{i}"}) + "\n")
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(
        keys=KEYS,
        clock=clock,
        settings=ServerSettings(limits=LimitSettings(groups=GROUPS), batches=settings),
    ) as server:
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))

        def created() -> int:
            return sum(server.batches.created.values())

        # 1: the job does not know the queue limit yet: all ten files go, and stay validating.
        first = start(config, source, out)
        wait_for(lambda: created() >= LINES // BATCH_SIZE, first)
        kill(first)
        clock.advance(2)  # validated: two per project run, the others failed on the limit

        # 2: the re-run polls, learns the limit, collects the first wave and submits the next.
        second = start(config, source, out)
        wait_for(lambda: "failed" in server.batches.statuses().values(), second)
        clock.advance(102)  # the first wave ends (5% of its lines expired)
        wait_for(lambda: output_lines(out) > 0 and created() > 10, second)
        kill(second)  # the next wave is in flight

        # 3: to the end, the clock moved on while the job polls.
        third = start(config, source, out)
        deadline = time.monotonic() + 120
        while third.poll() is None:
            assert time.monotonic() < deadline, "the job did not finish"
            clock.advance(20)
            time.sleep(0.02)
        assert third.returncode == 0, third.communicate()[1]

        # Every id exactly once, every one answered.
        records = [json.loads(line) for line in out.read_text().splitlines()]
        ids = Counter(record["id"] for record in records)
        assert len(ids) == LINES and set(ids.values()) == {1}
        assert all("response" in record for record in records)

        # No file uploaded twice, no batch created twice for one chunk and try.
        uploads: Counter[str] = Counter()
        batches: Counter[tuple[str, str, str]] = Counter()
        sent: Counter[str] = Counter()
        for key in (KEYS[0], KEYS[2]):  # one key of each project sees all of its project
            client = openai_client(api_key=key, base_url=server.base_url)
            for found in client.files.list(purpose="batch"):
                if found.filename.startswith("opt-"):
                    uploads[found.filename] += 1
                    content = client.files.content(found.id).text
                    sent.update(json.loads(line)["custom_id"] for line in content.splitlines())
            for batch in client.batches.list(limit=100):
                meta = batch.metadata or {}
                batches[(meta["opt_job"], meta["opt_chunk"], meta["opt_attempt"])] += 1
            client.close()
        assert uploads and set(uploads.values()) == {1}
        assert set(batches.values()) == {1} and sum(batches.values()) == created()
        statuses = Counter(server.batches.statuses().values())
        assert statuses["failed"] > 0  # the queue limit forced waiting
        # The lines that expired were sent again, in files of their own.
        resent = [custom_id for custom_id, count in sent.items() if count > 1]
        assert resent and statuses["expired"] > 0
        assert len(sent) == LINES
