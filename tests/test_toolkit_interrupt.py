"""A ParallelToolkit job in a process of its own, killed (SIGKILL) or interrupted (Ctrl-C)
partway; the process is forked from one that has imported the package (see `forked`).

The run after it, to resume, needs no signal: it runs the same script in this process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import forked
import pytest
from conftest import InProcessCli, wait_until_quiet

from openai_parallel_toolkit import RequestCache
from openai_parallel_toolkit.testing import FakeOpenAIServer

JOB = Path(__file__).with_name("toolkit_job.py")
FILES, ITEMS = 40, 3


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency=0.08, jitter=0.04, seed=3) as fake:
        yield fake


def _setup(tmp_path: Path, server: FakeOpenAIServer) -> tuple[Path, Path, Path]:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"api_keys": ["sk-job-0000000000000001"], "api_base": server.base_url})
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in range(FILES):
        items = [f"file {f} item {i}" for i in range(ITEMS)]
        (inputs / f"f{f:02d}.json").write_text(json.dumps({"items": items}))
    return config, inputs, tmp_path / "out"


def _start(config: Path, inputs: Path, out: Path) -> forked.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return forked.Popen(
        [sys.executable, str(JOB), str(config), str(inputs), str(out), "3"],
        stdout=forked.PIPE,
        stderr=forked.PIPE,
        text=True,
        env=env,
    )


def _quick(server: FakeOpenAIServer) -> None:
    """No more latency: it only made the first run slow enough to stop partway."""
    server.latency = server.jitter = 0.0


def _outputs(out: Path) -> list[Path]:
    if not out.exists():
        return []
    return sorted(p for p in out.glob("*.json"))


def _wait_for_outputs(out: Path, count: int, process: forked.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(_outputs(out)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.02)


def _assert_complete(out: Path, names: list[Path] | None = None) -> None:
    for path in names if names is not None else _outputs(out):
        f = int(path.stem[1:])
        data = json.loads(path.read_text())  # a half-written file would not parse
        assert data == {"results": [f"echo: file {f} item {i}" for i in range(ITEMS)]}


def test_killed_job_resumes_without_resending_finished_requests(
    run_cli: InProcessCli, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    config, inputs, out = _setup(tmp_path, server)
    process = _start(config, inputs, out)
    _wait_for_outputs(out, 8, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    survivors = _outputs(out)
    assert 8 <= len(survivors) < FILES
    _assert_complete(out, survivors)  # no half file in the output folder
    with RequestCache(out / ".openai-parallel-toolkit" / "cache.sqlite") as cache:
        cached = len(cache)
    assert cached >= len(survivors) * ITEMS
    wait_until_quiet(server)
    server.reset_counters()
    _quick(server)

    rerun = run_cli.script(JOB, str(config), str(inputs), str(out), "3")
    stdout, stderr = rerun.stdout, rerun.stderr
    assert rerun.returncode == 0, stderr
    assert f"skipped={len(survivors)}" in stdout and "failed=0" in stdout
    assert [p.name for p in _outputs(out)] == [f"f{f:02d}.json" for f in range(FILES)]
    _assert_complete(out)
    # Exactly the requests that had not succeeded before the kill were sent.
    assert server.total().requests == FILES * ITEMS - cached
    leftovers = list((out / ".openai-parallel-toolkit" / "staging").iterdir())
    assert leftovers == []


def test_ctrl_c_finishes_files_in_progress_and_reports(
    run_cli: InProcessCli, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    config, inputs, out = _setup(tmp_path, server)
    process = _start(config, inputs, out)
    _wait_for_outputs(out, 5, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "interrupted=True" in stdout
    assert "interrupted: run again to continue" in stderr  # the printed summary
    done = _outputs(out)
    assert 5 <= len(done) < FILES
    _assert_complete(out, done)
    _quick(server)
    rerun = run_cli.script(JOB, str(config), str(inputs), str(out), "3")
    stdout, stderr = rerun.stdout, rerun.stderr
    assert rerun.returncode == 0, stderr
    assert f"skipped={len(done)}" in stdout and "interrupted=False" in stdout
    assert len(_outputs(out)) == FILES
    _assert_complete(out)


def _read_stderr_until(process: forked.Popen, marker: str) -> str:
    assert process.stderr is not None
    seen = ""
    while marker not in seen:
        line = process.stderr.readline()
        assert line, f"the job ended before printing {marker!r}: {seen}"
        seen += line
    return seen


def test_second_ctrl_c_abandons_cleanly_and_a_rerun_does_each_file_once(
    run_cli: InProcessCli, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    config, inputs, out = _setup(tmp_path, server)
    process = _start(config, inputs, out)
    _wait_for_outputs(out, 5, process)
    # From now on the server holds each request for 4 s, so files are still in progress when
    # both Ctrl-Cs arrive; wait until one such request is being held.
    server.slow_seconds = 4.0
    server.set_fault("*", "slow")
    deadline = time.monotonic() + 60
    while True:
        counts = server.total()
        if counts.requests > counts.successes + counts.errors + counts.rate_limited:
            break
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no request reached the server"
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    seen = _read_stderr_until(process, "Ctrl-C again to abandon")
    process.send_signal(signal.SIGINT)
    stdout, rest = process.communicate(timeout=60)
    stderr = seen + rest
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
    assert "SUMMARY" not in stdout  # run() raised
    assert "ProgrammingError" not in stderr and "closed database" not in stderr, stderr
    assert "failed:" not in stderr, stderr  # abandoned files are not failures
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr  # nothing after the traceback
    done = _outputs(out)
    assert 5 <= len(done) < FILES
    _assert_complete(out, done)
    state = out / ".openai-parallel-toolkit"
    assert list((state / "staging").iterdir()) == []  # the state was closed, after the workers
    # Every answer the server gave, including those that came after the second Ctrl-C, was
    # recorded before the cache was closed: none is paid for twice.
    answered = server.total().successes
    with RequestCache(state / "cache.sqlite") as cache:
        assert len(cache) == answered
    server.clear_faults()
    server.reset_counters()
    _quick(server)

    rerun = run_cli.script(JOB, str(config), str(inputs), str(out), "3")
    stdout, stderr = rerun.stdout, rerun.stderr
    assert rerun.returncode == 0, stderr
    assert f"processed={FILES - len(done)} skipped={len(done)} failed=0 interrupted=False" in stdout
    assert [p.name for p in _outputs(out)] == [f"f{f:02d}.json" for f in range(FILES)]
    _assert_complete(out)
    assert server.total().requests == FILES * ITEMS - answered
