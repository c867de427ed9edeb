"""The command line end to end against the fake server: SIGKILL and Ctrl-C hit real processes,
the other runs go through the entry point in-process (the `run_cli` fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import forked
import pytest
from conftest import InProcessCli, wait_until_quiet

from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = ["sk-jobs-aaaaaaaaaaaaaaaa0001", "sk-jobs-aaaaaaaaaaaaaaaa0002"]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, seed=9) as fake:
        yield fake


def slowed(server: FakeOpenAIServer) -> None:
    """Replies take 0.03-0.07 s, so that a job can be stopped partway."""
    server.latency, server.jitter = 0.05, 0.02


def quick(server: FakeOpenAIServer) -> None:
    server.latency = server.jitter = 0.0


@pytest.fixture
def config(server: FakeOpenAIServer, tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    return path


def write_requests(path: Path, count: int, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
    with open(path, "w", encoding="utf-8") as file:
        for i in range(count):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "metadata": {"row": i},
            }
            file.write(json.dumps(body) + "\n")
        for line in extra:
            file.write(line + "\n")
    return path


def results(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def start_job_and_wait(
    requests: Path, output: Path, config: Path, threads: int, written: int
) -> forked.Popen:
    """`run` in the background, in a process of its own (forked from one that has imported the
    package, see `forked`); returns once it has written `written` bytes of results."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    process = forked.Popen(
        [sys.executable, "-m", "openai_parallel_toolkit", "run", str(requests), "-o",
         str(output), "--config", str(config), "--threads", str(threads), "--no-progress"],
        env=env, stdout=forked.DEVNULL, stderr=forked.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not output.exists() or output.stat().st_size < written:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return process


def test_a_killed_job_resumes_each_id_once_without_resending(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    requests = write_requests(tmp_path / "requests.jsonl", 200)
    output = tmp_path / "results.jsonl"
    slowed(server)
    process = start_job_and_wait(requests, output, config, threads=8, written=20_000)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = {r["id"] for r in results_tolerant(output) if "response" in r}
    assert 0 < len(finished) < 200
    wait_until_quiet(server)
    server.reset_counters()
    quick(server)

    again = run_cli("run", str(requests), "-o", str(output), "--config", str(config))
    assert again.returncode == 0, again.stderr
    records = results(output)
    counts = Counter(r["id"] for r in records)
    assert set(counts) == set(range(1, 201)) and set(counts.values()) == {1}
    assert all("response" in r for r in records)
    assert all(r["metadata"] == {"row": r["id"] - 1} for r in records)
    by_id = {r["id"]: r["response"]["choices"][0]["message"]["content"] for r in records}
    assert by_id[57] == "echo: question 56"
    # Exactly the unfinished requests were sent again.
    assert server.total().requests == 200 - len(finished)
    sent = {e["body"]["messages"][0]["content"] for e in server.request_log()}
    assert not sent & {f"question {i - 1}" for i in finished}


def results_tolerant(path: Path) -> list[dict[str, object]]:
    """The complete lines of a file a killed writer may have left torn."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def test_torn_last_line_is_repaired(run_cli: InProcessCli, config: Path, tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "requests.jsonl", 5)
    output = tmp_path / "results.jsonl"
    assert run_cli("run", str(requests), "-o", str(output), "--config", str(config)).returncode == 0
    lines = output.read_text().splitlines()
    torn = "\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2]  # a crash mid-write
    output.write_text(torn)
    result = run_cli("run", str(requests), "-o", str(output), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "repaired a torn last line" in result.stderr
    assert sorted(r["id"] for r in results(output)) == [1, 2, 3, 4, 5]


def test_malformed_lines_failures_and_ordered_copy(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    bad_request = json.dumps(
        {
            "custom_id": "too-long",
            "model": "m",
            "messages": [{"role": "user", "content": "[[context_length_exceeded]]"}],
        }
    )
    requests = write_requests(
        tmp_path / "requests.jsonl",
        4,
        [
            "{not json",
            "[1, 2]",
            bad_request,
            json.dumps({"custom_id": "c", "model": "m", "prompt": "p"}),
        ],
    )
    output = tmp_path / "results.jsonl"
    result = run_cli("run", str(requests), "-o", str(output), "--config", str(config), "--ordered")
    assert result.returncode == 1  # an item failed: run again to retry it
    assert "line 5:" in result.stderr and "line 6: not a JSON object" in result.stderr
    records = {r["id"]: r for r in results(output)}
    assert records["too-long"]["error"]["status_code"] == 400
    assert records["c"]["response"]["choices"][0]["text"] == "echo: p"
    ordered = [
        json.loads(line)["id"]
        for line in (tmp_path / "results.ordered.jsonl").read_text().splitlines()
    ]
    assert ordered == [1, 2, 3, 4, "c", "too-long"]
    # A file the tool creates through a rename gets the mode `open` would give it, readable
    # by whom the umask allows (not the private mode of a temporary file).
    umask = os.umask(0o022)
    os.umask(umask)
    mode = (tmp_path / "results.ordered.jsonl").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == output.stat().st_mode & 0o777
    # The failed item is tried again; its old error line does not stay beside the new one.
    server.reset_counters()
    again = run_cli("run", str(requests), "-o", str(output), "--config", str(config))
    assert again.returncode == 1 and server.total().requests == 1
    assert Counter(r["id"] for r in results(output))["too-long"] == 1


def test_exit_statuses_for_missing_files(
    run_cli: InProcessCli, config: Path, tmp_path: Path
) -> None:
    missing = run_cli(
        "run",
        str(tmp_path / "nope.jsonl"),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--config",
        str(config),
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nope.jsonl" in missing.stderr
    requests = write_requests(tmp_path / "r.jsonl", 1)
    no_config = run_cli(
        "run", str(requests), "-o", str(tmp_path / "o.jsonl"), "--config", str(tmp_path / "k.yaml")
    )
    assert no_config.returncode == 2 and "k.yaml" in no_config.stderr
    assert no_config.stderr.count("\n") == 1
    assert (
        run_cli("run", "--help").returncode == 0 and "example:" in run_cli("run", "--help").stdout
    )
    assert "example:" in run_cli("keys", "--help").stdout


def test_keys_check(run_cli: InProcessCli, server: FakeOpenAIServer, tmp_path: Path) -> None:
    keys = [
        "sk-check-aaaaaaaaaaaaaa0001",
        "sk-check-aaaaaaaaaaaaaa0002",
        "sk-check-aaaaaaaaaaaaaa0003",
    ]
    with FakeOpenAIServer(keys=keys, rpm=600, tpm=90_000) as upstream:
        upstream.set_fault(keys[1], "insufficient_quota")
        upstream.set_fault(keys[2], "invalid_api_key")
        path = tmp_path / "keys.yaml"
        path.write_text(
            "".join(f"auth_{i}:\n  api_key: {k}\n" for i, k in enumerate(keys))
            + f"api_base: {upstream.base_url}\n"
        )
        result = run_cli("keys", "check", "--config", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    good = next(line for line in lines if line.startswith("sk-...0001"))
    assert "works" in good and "600" in good and "90000" in good and "ms" in good
    assert "insufficient_quota" in next(line for line in lines if line.startswith("sk-...0002"))
    assert "401" in next(line for line in lines if line.startswith("sk-...0003"))
    assert all(key not in result.stdout + result.stderr for key in keys)


def test_ctrl_c_keeps_finished_results_and_the_next_run_continues(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    requests = write_requests(tmp_path / "requests.jsonl", 300)
    output = tmp_path / "results.jsonl"
    slowed(server)
    process = start_job_and_wait(requests, output, config, threads=4, written=5_000)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    first = results(output)  # every line complete: in-flight requests were finished and written
    assert 0 < len(first) < 300
    quick(server)
    again = run_cli("run", str(requests), "-o", str(output), "--config", str(config))
    assert again.returncode == 0
    assert sorted(r["id"] for r in results(output)) == list(range(1, 301))
