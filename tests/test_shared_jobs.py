"""Several workers on one job through a real Redis server (issue 14): JSONL jobs and files.

Workers are processes of their own (``run --worker``, forked by `forked`, which has imported
the package already) so that one can be killed with SIGKILL; the fake OpenAI server's request log
tells how often each line was sent.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import forked
import poison_worker
import pytest

from openai_parallel_toolkit import APIKeyManager
from openai_parallel_toolkit.jobs import ResultsFileError, request_hash
from openai_parallel_toolkit.jobs.distributed import MAX_DELIVERIES, run_shared_jsonl_job
from openai_parallel_toolkit.jobs.parts import parts_folder
from openai_parallel_toolkit.testing import FakeOpenAIServer
from openai_parallel_toolkit.testing.redis_server import RedisServer

KEY = "sk-jobs-" + "w" * 24
THREADS = 3  # per worker: at most this many of a killed worker's requests are in flight


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _write_input(path: Path, count: int, tag: str = "item") -> None:
    with open(path, "w", encoding="utf-8") as file:
        for n in range(1, count + 1):
            body: dict[str, object] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"{tag} {n}"}],
            }
            if n % 10 == 0:
                body["custom_id"] = f"{tag}-{n}"
            file.write(json.dumps(body) + "\n")


def _config(tmp_path: Path, server: FakeOpenAIServer) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"api_keys": [KEY], "api_base": server.base_url}))
    return path


def _worker(
    config: Path, source: Path, target: Path, redis_url: str, lease: float = 2.0
) -> forked.Popen:
    """A worker process (`forked`: Ctrl-C raises KeyboardInterrupt in it even where the tests'
    own process was started with SIGINT ignored, as a background job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    command = [sys.executable, "-m", "openai_parallel_toolkit", "run", str(source)]
    command += ["-o", str(target), "--config", str(config), "--redis", redis_url, "--worker"]
    command += ["--threads", str(THREADS), "--lease", str(lease), "--chunk-size", "5"]
    command += ["--no-progress"]
    return forked.Popen(command, stdout=forked.PIPE, stderr=forked.PIPE, text=True, env=env)


def _finish(process: forked.Popen) -> None:
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err


def _first_to_write(folder: Path, processes: list[forked.Popen], count: int) -> forked.Popen:
    """The worker whose part file first holds `count` lines (part files are named by pid)."""
    deadline = time.monotonic() + 30
    while True:
        for process in processes:
            parts = list(folder.glob(f"*-{process.pid}-*.jsonl"))
            if parts and parts[0].read_bytes().count(b"\n") >= count:
                return process
            assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no worker wrote anything"
        time.sleep(0.02)


def _expected_ids(count: int, tag: str = "item") -> dict[object, str]:
    """id -> the content of its request."""
    return {(f"{tag}-{n}" if n % 10 == 0 else n): f"{tag} {n}" for n in range(1, count + 1)}


def _check_output(target: Path, count: int, tag: str = "item") -> None:
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    ids = [record["id"] for record in records]
    expected = _expected_ids(count, tag)
    assert sorted(map(str, ids)) == sorted(map(str, expected)), "every id exactly once"
    for record in records:
        content = expected[record["id"]]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
        assert record["request_hash"] == request_hash("chat", body)
        answer = record["response"]["choices"][0]["message"]["content"]
        assert content in answer  # the fake server echoes the prompt: never another line's


def _sends(server: FakeOpenAIServer) -> collections.Counter[str]:
    return collections.Counter(
        entry["body"]["messages"][-1]["content"]
        for entry in server.request_log()
        # A body cut short by the kill was never a request (the server logs it as None).
        if entry["path"].endswith("/chat/completions") and entry["body"] is not None
    )


def test_a_killed_worker_loses_nothing_and_every_id_is_answered_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    count = 60
    source, target = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    _write_input(source, count)
    with FakeOpenAIServer(latency=0.1) as server:
        config = _config(tmp_path, server)
        workers = [_worker(config, source, target, redis_server.url) for _ in range(2)]
        # The first worker to write is killed with chunks claimed and requests in flight.
        victim = _first_to_write(parts_folder(target), workers, 2)
        victim.send_signal(signal.SIGKILL)
        others = [process for process in workers if process is not victim]
        victim.wait(timeout=10)
        for process in others:
            _finish(process)
        _check_output(target, count)
        assert not parts_folder(target).exists()
        sends = _sends(server)
        assert set(sends) == set(_expected_ids(count).values())
        again = [content for content, times in sends.items() if times > 1]
        # Only what the killed worker had in flight is sent again, and only once more.
        assert len(again) <= THREADS and all(sends[content] == 2 for content in again)

        before = server.total().requests
        finished = target.read_bytes()
        with _pool(server) as pool:
            summary = run_shared_jsonl_job(
                source, target, manager=pool, redis_url=redis_server.url, progress=False
            )
        assert server.total().requests == before, "a re-run after the end sends nothing"
        assert (summary.done, summary.skipped) == (0, count)
        assert target.read_bytes() == finished


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_worker_hands_back_its_chunks_at_once(
    redis_server: RedisServer, tmp_path: Path, stop: signal.Signals, status: int
) -> None:
    count = 60
    source, target = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    _write_input(source, count)
    lease = 60.0  # far longer than the job takes: only a hand-back lets the next worker in
    with FakeOpenAIServer(latency=0.1) as server:
        config = _config(tmp_path, server)
        first = _worker(config, source, target, redis_server.url, lease)
        _first_to_write(parts_folder(target), [first], 2)
        first.send_signal(stop)
        _, err = first.communicate(timeout=30)
        assert first.returncode == status, err
        assert "interrupted" in err
        stopped_at = server.total().requests
        assert stopped_at < count, "stopped with work left"

        second = _worker(config, source, target, redis_server.url, lease)
        _, err = second.communicate(timeout=lease / 2)  # never waits out the first's lease
        assert second.returncode == 0, err
        _check_output(target, count)
        assert not parts_folder(target).exists()
        # What the first worker had in flight was answered and written before it stopped:
        # nothing is sent twice.
        sends = _sends(server)
        assert set(sends) == set(_expected_ids(count).values())
        assert set(sends.values()) == {1}


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_a_chunk_no_worker_gets_through_ends_with_error_lines(
    redis_server: RedisServer, tmp_path: Path, mode: str
) -> None:
    """A line that kills its worker (SIGKILL) or makes it raise, every time: its chunk is
    handed out MAX_DELIVERIES times, then its lines not answered get error lines."""
    count, poison = 12, 6  # chunks of 4: lines 5-8 share the poison's chunk
    source, target = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    prompts = {n: f"item {n}" + (" POISON" if n == poison else "") for n in range(1, count + 1)}
    with open(source, "w", encoding="utf-8") as file:
        for n in range(1, count + 1):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompts[n]}]}
            file.write(json.dumps(body) + "\n")
    # A killed worker's chunk waits out its lease; a failed one is handed back at once.
    lease = "1" if mode == "kill" else "60"
    with FakeOpenAIServer() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        command = [sys.executable, str(POISON_WORKER), server.base_url, redis_server.url]
        command += [str(source), str(target), lease, mode]
        stopped = 0
        for _ in range(MAX_DELIVERIES + 2):
            if mode == "kill":  # a process of its own, killed with SIGKILL
                run = forked.run(command, capture_output=True, text=True, env=env, timeout=60)
                if run.returncode == 0:
                    break
                assert run.returncode == -signal.SIGKILL, run.stderr
            else:  # a worker in this process whose processing fails
                try:
                    poison_worker.work(*command[2:])
                    break
                except poison_worker.WorkerCrash:
                    pass
            stopped += 1
        else:
            pytest.fail("the job never finished")
        assert stopped == MAX_DELIVERIES
        records = {
            record["id"]: record
            for record in map(json.loads, target.read_text(encoding="utf-8").splitlines())
        }
        assert len(target.read_text(encoding="utf-8").splitlines()) == count, "each id once"
        assert set(records) == set(prompts)
        failed = {n for n, record in records.items() if "error" in record}
        assert poison in failed and failed <= {5, 6, 7, 8}, "only the poison's chunk"
        message = records[poison]["error"]["message"]
        assert f"handed to {MAX_DELIVERIES} workers" in message
        assert records[poison]["error"]["type"] == "RequestFailedError"
        sends = _sends(server)
        for n, record in records.items():
            if n in failed:
                assert prompts[n] not in sends, "an error line is never an answer sent"
            else:
                assert sends[prompts[n]] == 1, "answered once"
                assert prompts[n] in record["response"]["choices"][0]["message"]["content"]
        assert not parts_folder(target).exists()


POISON_WORKER = Path(__file__).with_name("poison_worker.py")


def _pool(server: FakeOpenAIServer) -> APIKeyManager:
    return APIKeyManager(api_keys=[KEY], api_base=server.base_url, make_default=False)


def test_two_jobs_on_one_redis_never_mix(redis_server: RedisServer, tmp_path: Path) -> None:
    jobs = []
    for tag in ("one", "two"):
        source, target = tmp_path / f"{tag}.jsonl", tmp_path / f"{tag}.out.jsonl"
        _write_input(source, 12, tag)
        jobs.append((source, target))
    with FakeOpenAIServer() as server, _pool(server) as pool:

        def work(source: Path, target: Path) -> None:
            run_shared_jsonl_job(
                source,
                target,
                manager=pool,
                redis_url=redis_server.url,
                threads=2,
                chunk_size=3,
                progress=False,
            )

        threads = [
            threading.Thread(target=work, args=job) for job in jobs for _ in range(2)
        ]  # two workers on each job
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert server.total().requests == 24
    for (_, target), tag in zip(jobs, ("one", "two"), strict=True):
        _check_output(target, 12, tag)


def test_an_output_of_something_else_is_refused_and_left_alone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    source, target = tmp_path / "requests.jsonl", tmp_path / "notes.txt"
    _write_input(source, 5)
    target.write_text("my notes\n")
    with FakeOpenAIServer() as server, _pool(server) as pool:
        with pytest.raises(ResultsFileError):
            run_shared_jsonl_job(
                source, target, manager=pool, redis_url=redis_server.url, progress=False
            )
        assert server.total().requests == 0
    assert target.read_text() == "my notes\n"


TOOLKIT_JOB = Path(__file__).with_name("toolkit_job.py")
FILES, ITEMS = 16, 2


def test_two_workers_on_toolkit_files_process_each_file_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from toolkit_job import Job

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for f in range(FILES):
        items = [f"file {f} item {i}" for i in range(ITEMS)]
        (inputs / f"f{f:02d}.json").write_text(json.dumps({"items": items}))
    with FakeOpenAIServer(latency=0.05) as server:
        config = tmp_path / "config.json"
        config.write_text(
            json.dumps(
                {"api_keys": [KEY], "api_base": server.base_url, "shared_state": redis_server.url}
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        command = [sys.executable, str(TOOLKIT_JOB), str(config), str(inputs), str(out), "2"]
        workers = [
            forked.Popen(command, stdout=forked.PIPE, stderr=forked.PIPE, text=True, env=env)
            for _ in range(2)
        ]
        processed = 0
        for process in workers:
            stdout, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
            summary = dict(part.split("=") for part in stdout.split()[1:])
            assert summary["failed"] == "0"
            processed += int(summary["processed"])
        assert processed == FILES
        sends = _sends(server)
        expected = {f"file {f} item {i}" for f in range(FILES) for i in range(ITEMS)}
        assert set(sends) == expected and set(sends.values()) == {1}, "each file once"
        for f in range(FILES):
            data = json.loads((out / f"f{f:02d}.json").read_text())
            assert data == {"results": [f"echo: file {f} item {i}" for i in range(ITEMS)]}

        with _pool(server) as pool:  # the shared_state argument, where the config has none
            rerun = Job(
                None, inputs, out, manager=pool, progress=False, shared_state=redis_server.url
            )
            again = rerun.run()
        assert (again.processed, again.skipped) == (0, FILES)
        assert len(server.request_log()) == len(expected), "the re-run sends nothing"


def test_the_merge_keeps_one_line_per_id_preferring_an_answer(tmp_path: Path) -> None:
    from openai_parallel_toolkit.jobs.parts import merge_parts
    from openai_parallel_toolkit.jobs.results import result_line

    target = tmp_path / "results.jsonl"
    target.write_text(result_line(1, "h1", None, "response", {"n": 1}), encoding="utf-8")
    folder = parts_folder(target)
    folder.mkdir()
    (folder / "a.jsonl").write_text(
        result_line(1, "h1", None, "response", {"n": "again"})  # merged before: kept once
        + result_line(2, "h2", None, "error", {"message": "timeout"})
        + result_line(3, "h3", None, "response", {"n": 3}),
        encoding="utf-8",
    )
    (folder / "b.jsonl").write_text(
        result_line(2, "h2", None, "response", {"n": 2})  # the answer wins over the error
        + result_line(3, "h3", None, "response", {"n": "twice"})  # the first answer stays
        + '{"id": 4, "request',  # torn by a kill
        encoding="utf-8",
    )
    assert merge_parts(target, folder) == 2
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted((r["id"], r.get("response")) for r in records) == [
        (1, {"n": 1}),
        (2, {"n": 2}),
        (3, {"n": 3}),
    ]
    assert not folder.exists()
