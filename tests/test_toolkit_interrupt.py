"""A ParallelToolkit job in a subprocess, killed (SIGKILL) or interrupted (Ctrl-C) partway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def _start(config: Path, inputs: Path, out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.Popen(
        [sys.executable, str(JOB), str(config), str(inputs), str(out), "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _outputs(out: Path) -> list[Path]:
    if not out.exists():
        return []
    return sorted(p for p in out.glob("*.json"))


def _wait_for_outputs(out: Path, count: int, process: subprocess.Popen[str]) -> None:
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
    tmp_path: Path, server: FakeOpenAIServer
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
    server.reset_counters()

    rerun = _start(config, inputs, out)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert f"skipped={len(survivors)}" in stdout and "failed=0" in stdout
    assert [p.name for p in _outputs(out)] == [f"f{f:02d}.json" for f in range(FILES)]
    _assert_complete(out)
    # Exactly the requests that had not succeeded before the kill were sent.
    assert server.total().requests == FILES * ITEMS - cached
    leftovers = list((out / ".openai-parallel-toolkit" / "staging").iterdir())
    assert leftovers == []


def test_ctrl_c_finishes_files_in_progress_and_reports(
    tmp_path: Path, server: FakeOpenAIServer
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
    rerun = _start(config, inputs, out)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert f"skipped={len(done)}" in stdout and "interrupted=False" in stdout
    assert len(_outputs(out)) == FILES
    _assert_complete(out)
