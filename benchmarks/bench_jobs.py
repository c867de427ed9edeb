"""JSONL jobs on a 1,000,000-line file: memory stays flat.

    python benchmarks/bench_jobs.py [--lines 1000000] [--left 5000] [--fresh 20000]

Writes a request file of `--lines` lines and a result file that already answers all but the
last `--left` of them, then resumes the job with the command line (in a process of its own,
against the bundled fake server in another) and reports its peak RSS and time. A second run
processes `--fresh` new items from scratch, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai_parallel_toolkit.jobs import request_hash
from openai_parallel_toolkit.jobs.results import result_line

KEYS = [f"sk-jobs-bench-{'j' * 20}{i:04d}" for i in range(8)]


def _body(i: int) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}


def _write_requests(path: Path, lines: int) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for i in range(lines):
            file.write(json.dumps(_body(i)) + "\n")


def _write_answers(path: Path, count: int) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for i in range(1, count + 1):
            answer = {"choices": [{"index": 0, "message": {"content": f"echo: q{i - 1}"}}]}
            file.write(result_line(i, request_hash("chat", _body(i - 1)), None, "response", answer))


def _run(requests: Path, output: Path, config: Path) -> tuple[float, float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    # A wrapper reports the job's own peak RSS (ru_maxrss of its one child) as its last line.
    wrapper = (
        "import resource, subprocess, sys\n"
        "code = subprocess.call(sys.argv[1:])\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    command = [
        sys.executable, "-c", wrapper, sys.executable, "-m", "openai_parallel_toolkit",
        "run", str(requests), "-o", str(output), "--config", str(config), "--no-progress",
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    match = re.search(r"MAXRSS (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(result.stderr[-2000:])
    summary = next(line for line in result.stderr.splitlines() if "done" in line)
    return int(match.group(1)) / 1024, elapsed, summary.split(": ", 1)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--left", type=int, default=5000)
    parser.add_argument("--fresh", type=int, default=20_000)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "openai_parallel_toolkit", "fake-server", "--port", "0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert server.stdout is not None
    base_url = re.search(r"(http://\S+/v1)", server.stdout.readline()).group(1)  # type: ignore[union-attr]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            config = folder / "keys.json"
            config.write_text(json.dumps({"api_keys": KEYS, "api_base": base_url}))
            requests, output = folder / "requests.jsonl", folder / "results.jsonl"
            _write_requests(requests, args.lines)
            _write_answers(output, args.lines - args.left)
            size = requests.stat().st_size / 1e6
            rss, elapsed, summary = _run(requests, output, config)
            print(f"resume {args.lines:,} lines ({size:.0f} MB), {args.left:,} left to send:")
            print(f"  peak RSS {rss:.0f} MB, {elapsed:.1f} s; {summary}")
            fresh = folder / "fresh.jsonl"
            _write_requests(fresh, args.fresh)
            rss, elapsed, summary = _run(fresh, folder / "fresh-results.jsonl", config)
            print(f"fresh {args.fresh:,} lines: peak RSS {rss:.0f} MB, {elapsed:.1f} s "
                  f"({args.fresh / elapsed:.0f} requests/s); {summary}")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
