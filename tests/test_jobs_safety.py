"""JSONL jobs never destroy, mix up or lose data: refusals, bad lines, changed lines, signals."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import InProcessCli

from openai_parallel_toolkit import APIKeyManager
from openai_parallel_toolkit.jobs import JobSummary, ResultsFileError, request_hash, run_jsonl_job
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = ["sk-safe-aaaaaaaaaaaaaaaa0001", "sk-safe-aaaaaaaaaaaaaaaa0002"]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS) as fake:
        yield fake


@pytest.fixture
def manager(server: FakeOpenAIServer) -> Iterator[APIKeyManager]:
    pool = APIKeyManager(
        api_keys=[{"api_key": k, "api_base": server.base_url} for k in KEYS], make_default=False
    )
    yield pool
    pool.close()


def chat(content: str, **extra: object) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def results(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def answer(record: dict[str, object]) -> str:
    response = record["response"]
    assert isinstance(response, dict)
    return str(response["choices"][0]["message"]["content"])


def run(
    source: Path, target: Path, manager: APIKeyManager, redo_changed: bool = False
) -> JobSummary:
    return run_jsonl_job(source, target, manager=manager, progress=False, redo_changed=redo_changed)


@pytest.fixture
def config(server: FakeOpenAIServer, tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    return path


def test_output_equal_to_input_is_refused_and_untouched(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    requests = write_lines(tmp_path / "same.jsonl", [chat(f"q{i}") for i in range(5)])
    before = requests.read_bytes()
    result = run_cli("run", str(requests), "-o", str(requests), "--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "output is the input" in result.stderr
    assert requests.read_bytes() == before and server.total().requests == 0


def test_an_unrelated_file_with_a_torn_last_line_is_refused_and_untouched(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    requests = write_lines(tmp_path / "requests.jsonl", [chat("a"), chat("b")])
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"".join((chat(f"x{i}") + "\n").encode() for i in range(3)) + b'{"mod')
    before = other.read_bytes()
    result = run_cli("run", str(requests), "-o", str(other), "--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "line 1 is not a result line" in result.stderr and "unchanged" in result.stderr
    assert other.read_bytes() == before and server.total().requests == 0


def test_a_non_utf8_output_file_is_refused_and_untouched(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    requests = write_lines(tmp_path / "requests.jsonl", [chat("a")])
    output = tmp_path / "results.jsonl"
    output.write_bytes(b"\xff\xfe binary\n")
    result = run_cli("run", str(requests), "-o", str(output), "--config", str(config))
    assert result.returncode == 2 and "not valid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr and output.read_bytes() == b"\xff\xfe binary\n"


def test_results_of_another_input_are_refused_never_reused(
    server: FakeOpenAIServer, manager: APIKeyManager, tmp_path: Path
) -> None:
    first = write_lines(tmp_path / "first.jsonl", [chat(f"first {i}") for i in range(20)])
    second = write_lines(tmp_path / "second.jsonl", [chat(f"second {i}") for i in range(20)])
    output = tmp_path / "results.jsonl"
    run(first, output, manager)
    before = output.read_bytes()
    server.reset_counters()
    with pytest.raises(ResultsFileError, match="results of another job"):
        run(second, output, manager)
    assert output.read_bytes() == before and server.total().requests == 0


def test_a_changed_line_is_refused_or_redone_never_answered_from_the_old_prompt(
    server: FakeOpenAIServer, manager: APIKeyManager, tmp_path: Path
) -> None:
    lines = [chat(f"q{i}") for i in range(6)]
    requests = write_lines(tmp_path / "requests.jsonl", lines)
    output = tmp_path / "results.jsonl"
    run(requests, output, manager)
    lines[2] = chat("a new question")
    write_lines(requests, lines)
    before = output.read_bytes()
    server.reset_counters()
    with pytest.raises(ResultsFileError, match=r"1 requests changed .*line 3"):
        run(requests, output, manager)
    assert output.read_bytes() == before and server.total().requests == 0

    summary = run(requests, output, manager, redo_changed=True)
    assert server.total().requests == 1
    assert summary.redone == 1 and summary.skipped == 5
    records = {r["id"]: r for r in results(output)}
    assert len(records) == len(results(output)) == 6
    assert answer(records[3]) == "echo: a new question"
    assert records[3]["request_hash"] == request_hash("chat", json.loads(lines[2]))


def test_ids_are_unambiguous(
    server: FakeOpenAIServer, manager: APIKeyManager, tmp_path: Path
) -> None:
    lines = [chat(f"q{i}") for i in range(14)]
    lines.append(chat("fifteen", custom_id=12))  # a number would collide with line 12's id
    lines.append(chat("sixteen", custom_id="dup"))
    lines.append(chat("seventeen", custom_id="dup"))
    requests = write_lines(tmp_path / "requests.jsonl", lines)
    output = tmp_path / "results.jsonl"
    summary = run(requests, output, manager)
    malformed = summary.malformed
    assert any(m.startswith("line 15: custom_id must be a non-empty string") for m in malformed)
    assert "line 17: custom_id 'dup' is already used by line 16" in malformed
    records = results(output)
    assert Counter(r["id"] for r in records) == Counter([*range(1, 15), "dup"])
    by_id = {r["id"]: r for r in records}
    assert answer(by_id[12]) == "echo: q11" and answer(by_id["dup"]) == "echo: sixteen"


def test_invalid_utf8_and_a_bom_are_reported_by_line_and_the_rest_runs(
    run_cli: InProcessCli, config: Path, tmp_path: Path
) -> None:
    raw = [(chat(f"q{i}") + "\n").encode() for i in range(600)]
    raw[0] = b"\xef\xbb\xbf" + raw[0]
    raw[499] = raw[499].replace(b"q499", b"q\xff499")
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(raw))
    output = tmp_path / "results.jsonl"
    result = run_cli(
        "run", str(requests), "-o", str(output), "--config", str(config), "--no-progress"
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "line 500: not valid UTF-8 (byte 0xff" in result.stderr
    assert result.stderr.count("line 500") == 1  # reported once
    ids = sorted(int(str(r["id"])) for r in results(output))
    assert ids == [i for i in range(1, 601) if i != 500]
    again = run_cli("run", str(requests), "-o", str(output), "--config", str(config))
    assert again.returncode == 1 and "done 0, skipped 599" in again.stderr


def test_a_lone_surrogate_escape_is_reported_by_line_and_field_and_the_rest_runs(
    run_cli: InProcessCli, config: Path, tmp_path: Path
) -> None:
    lines = [chat(f"q{i}") for i in range(4)]
    lines[1] = lines[1].replace("q1", "q\\ud8001")  # half a character: no UTF-8 can carry it
    lines[2] = lines[2][:-1] + ', "metadata": {"tag\\udfff": 1}}'
    requests = write_lines(tmp_path / "requests.jsonl", lines)
    output = tmp_path / "results.jsonl"
    result = run_cli(
        "run", str(requests), "-o", str(output), "--config", str(config), "--no-progress"
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "line 2: field 'messages[0].content': a lone surrogate" in result.stderr
    assert "line 3: field 'metadata.tag\\udfff': a lone surrogate" in result.stderr
    assert sorted(int(str(r["id"])) for r in results(output)) == [1, 4]


def test_a_stream_request_is_answered_with_a_whole_response(
    server: FakeOpenAIServer, manager: APIKeyManager, tmp_path: Path
) -> None:
    requests = write_lines(
        tmp_path / "requests.jsonl",
        [chat("streamed", stream=True, stream_options={"include_usage": True})],
    )
    output = tmp_path / "results.jsonl"
    summary = run(requests, output, manager)
    assert summary.done == 1
    (record,) = results(output)
    assert answer(record) == "echo: streamed"
    (sent,) = server.request_log()
    assert "stream" not in sent["body"] and "stream_options" not in sent["body"]


def test_sigterm_finishes_in_flight_requests_and_prints_the_summary(
    run_cli: InProcessCli, config: Path, tmp_path: Path
) -> None:
    from test_jobs import results_tolerant, start_job_and_wait, write_requests

    requests = write_requests(tmp_path / "requests.jsonl", 300)
    output = tmp_path / "results.jsonl"
    process = start_job_and_wait(requests, output, config, threads=4, written=5_000)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "interrupted: run again to continue" in stderr
    first = results_tolerant(output)
    assert len(first) == len(output.read_text().splitlines())  # no torn line
    again = run_cli("run", str(requests), "-o", str(output), "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert sorted(int(str(r["id"])) for r in results(output)) == list(range(1, 301))
